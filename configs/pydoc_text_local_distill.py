"""Di4C student of the text teacher with the Markov chain's levers (not in the paper).

configs/pydoc_text_distill.py (the configs/pydoc_text.py teacher, di4c at 3e-4) with the levers
measured on the chain (configs/markov_local_distill.py): local latents (16 blocks of 4
characters, rotated at every step, with the slot embedding), the student-only position
embedding, stratified latents, Delta = t / 2, the latent path at 10x the learning rate, and five
times the budget (3000 steps). Measured (docs/results/text.md; docs/results/pydoc/local_shift_3000steps/,
training seed 0): ngram_js at N = 1 / 2 / 4 / 8 0.3224 / 0.2500 / 0.2115 / 0.1924 against the
teacher's 0.3400 / 0.2590 / 0.2139 / 0.1938 at N and 0.2590 / 0.2139 / 0.1938 / 0.1870 at 2N:
22 % / 20 % / 12 % / 19 % of the way to 2N, better than the teacher by 23 / 9.6 / 2.6 / 1.2
standard errors at its entropy per token or above. At 600 steps (`--config.train.num_steps=600`,
the budget before 2026-12-01; docs/results/pydoc/local_shift{,_seed1}/): 0.3341 / 0.2559 /
0.2136 / 0.1920 (seed 0) and 0.3348 / 0.2568 / 0.2138 / 0.1926 (seed 1), 5-7 % of the way at
N = 1, 2. From a teacher trained ten times longer the same two budgets reach 6-7 % and 36 % of
the way at N = 1 (two seeds each; docs/results/pydoc/local_shift_teacher10x_3000steps{,_seed1}/).
The default text config's student (global latent) equals its teacher at every N.

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
  # 5x pydoc_text_distill's 600: measured to keep paying at N = 1, 2 (the docstring).
  c.train.num_steps = 3000
  return c
