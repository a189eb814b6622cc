"""Di4C student of the learned Markov teacher with the chain's levers (not in the paper).

configs/markov_distill.py (the learned configs/markov.py teacher, 600 steps at 3e-4) with the
levers measured on the exact-teacher chain (configs/markov_exact_local_distill.py): local
latents (8 blocks of 4 positions, rotated at every step), Delta = t / 2, stratified latents
and the student-only position embedding; and the latent path (block head, latent embedding, position embedding) at
10x the learning rate (optim.latent_lr_mult): at this recipe's 3e-4 for 600 steps the
zero-initialised position embedding moved a fifth as far as at the exact-teacher config's 1e-3
for 1500 steps (rms 0.006 against 0.031) and bought little; at 10x it moves as far (0.040).
Measured (docs/results/markov.md, docs/results/markov_learned/local_lp_lr10*/): pair_tv at N =
1 / 2 / 4 / 8 0.1669 / 0.1172 / 0.0852 / 0.0750 (training seed 0) and 0.1697 / 0.1204 / 0.0883 /
0.0742 (seed 1) against this teacher's 0.2678 / 0.1627 / 0.1042 / 0.0802 at N and 0.1627 /
0.1042 / 0.0802 / 0.0661 at 2N: better than the teacher at N everywhere, 93-96 % of the way to
2N at N = 1, 72-78 % at N = 2, 66-79 % at N = 4, 37-43 % at N = 8. With fixed blocks: 0.1705 /
0.1162 / 0.0926 / 0.0768 and 0.1724 / 0.1206 / 0.0914 / 0.0774; without the position embedding
and the 10x as well: 0.2412 / 0.1442 / 0.0958 / 0.0756 (seed 0).

  python -m launch.train --config=configs/markov.py --workdir=workdirs/markov_teacher
  python -m launch.distill --config=configs/markov_local_distill.py \
      --workdir=workdirs/markov_local_student
"""

from mixture_dd.configs import markov_distill


def get_config():
  c = markov_distill.get_config()
  # latent_scope: "global" (the paper) | "blocks" (latent_dim blocks; must divide length 32).
  # latent_positions: "none" (the paper) | "learned" (a student-only position embedding).
  # latent_shift: "none" (fixed blocks) | "random" (blocks rotated at every step).
  c.model.update(
    latent_dim=8, latent_scope="blocks", latent_positions="learned", latent_shift="random"
  )
  # delta: "const" | "loguniform" | "min_frac" (min(delta_lo, delta_frac * t): t / 2 here).
  # latent_sampling: "iid" (the paper) | "stratified" (one latent per stratum of [0, 1]).
  c.distill.update(
    delta="min_frac", delta_lo=0.99, delta_hi=0.99, delta_frac=0.5, latent_sampling="stratified"
  )
  c.optim.latent_lr_mult = 10.0  # > 0; 1 trains the latent path at optim.lr like the rest
  return c
