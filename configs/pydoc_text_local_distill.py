"""Di4C student of the text teacher with the Markov chain's levers (not in the paper).

configs/pydoc_text_distill.py (the configs/pydoc_text.py teacher, 600 steps at 3e-4, di4c) with
the levers measured on the chain (configs/markov_local_distill.py): local latents (16 blocks of 4
characters, rotated at every step, with the slot embedding), the student-only position embedding,
stratified latents, Delta = t / 2, and the latent path at 10x the learning rate. Measured (README
"Text", docs/results/pydoc/local_shift{,_seed1}/): ngram_js at N = 1 / 2 / 4 / 8 0.3341 / 0.2559 /
0.2136 / 0.1920 (training seed 0) and 0.3348 / 0.2568 / 0.2138 / 0.1926 (seed 1) against the
teacher's 0.3400 / 0.2590 / 0.2139 / 0.1938 at N and 0.2590 / 0.2139 / 0.1938 / 0.1870 at 2N:
better than the teacher at N = 1 and 2 at its entropy per token, the same at 4 and 8, 5-7 % of
the way to 2N. The default text config's student (global latent) equals its teacher at every N.
Five times this budget (--config.train.num_steps=3000, at the same 3e-4) from a teacher trained
ten times longer: 36 % of the way to 2N at N = 1 and 25-27 % at N = 2 on two seeds, where 600
steps from that teacher reached 6-7 % and 5-8 % (README "Text"; docs/results/pydoc/
local_shift_teacher10x_3000steps{,_seed1}/). The default stays 600, the budget of the numbers above.

  python -m launch.train --config=configs/pydoc_text.py --workdir=workdirs/pydoc_teacher
  python -m launch.distill --config=configs/pydoc_text_local_distill.py \
      --workdir=workdirs/pydoc_local_student
"""

from mixture_dd.configs import pydoc_text_distill


def get_config():
  c = pydoc_text_distill.get_config()
  # latent_scope: "global" (the paper) | "blocks" (latent_dim blocks; must divide length 64).
  # latent_positions: "none" (the paper) | "learned" (a student-only position embedding).
  # latent_shift: "none" (fixed blocks) | "random" (blocks rotated at every step).
  c.model.update(
    latent_dim=16, latent_scope="blocks", latent_positions="learned", latent_shift="random"
  )
  # delta: "const" | "loguniform" | "min_frac" (min(delta_lo, delta_frac * t): t / 2 here).
  # latent_sampling: "iid" (the paper) | "stratified" (one latent per stratum of [0, 1]).
  c.distill.update(
    delta="min_frac", delta_lo=0.99, delta_hi=0.99, delta_frac=0.5, latent_sampling="stratified"
  )
  c.optim.latent_lr_mult = 10.0  # > 0; 1 trains the latent path at optim.lr like the rest
  return c
