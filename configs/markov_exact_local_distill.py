"""Di4C student of the Markov chain's exact teacher with local latents (not in the paper).

configs/markov_exact_distill.py with four changes, each measured on this chain (1500 steps, 2
CPU cores, training seeds 0 and 1; README "Markov chain", docs/results/markov_exact/cpu1500_*.md):
  * local latents (model.latent_scope "blocks", latent_dim 8: eight blocks of four positions,
    each with its own lambda coordinate, so the student is a product of eight block mixtures;
    networks.BlockLatentPath): the chain's correlation is local, and one lambda shared by 32
    positions expressed a few per cent of it;
  * Delta = t / 2 (distill.delta "min_frac" with delta_frac 0.5 under a 0.99 cap): the
    consistency target is a two-step sampler's law instead of a 0.05 step back;
  * stratified latents (distill.latent_sampling "stratified"): each example's 16 latents one
    per sixteenth of [0, 1], a tighter likelihood estimate; the mixture then expresses 1.5 to
    3 times the correlation of iid latents;
  * positions the student can see (model.latent_positions "learned"): with rope and every token
    masked (t = 1) all positions of a block got the same logits for every lambda, so each
    block's mixture could only express exchangeable correlation; a zero-initialised position
    embedding for the student lifts that.
Student pair_tv at N = 1 / 2 / 4 / 8: 0.1522 / 0.1068 / 0.0807 / 0.0685 (training seed 0) and
0.1538 / 0.1051 / 0.0814 / 0.0700 (seed 1), against the exact teacher's 0.2556 / 0.1547 /
0.0972 / 0.0725 at the same N and 0.1547 / 0.0972 / 0.0725 / 0.0637 at 2N: the teacher at 2N at
N = 1 on both seeds (1.2 and 0.5 standard errors of the difference better), 83-86 % of the way
from the teacher at N to the teacher at 2N at N = 2, 64-67 % at N = 4; better than the teacher
at the same N everywhere (by 53 / 21 / 7.9 / 1.6 and 56 / 21 / 6.7 / 1.0 standard errors).
Without the position embedding: 0.2419 / 0.1400 / 0.0924 / 0.0754 and 0.2450 / 0.1402 / 0.0896 /
0.0751.

  python -m launch.distill --config=configs/markov_exact_local_distill.py \
      --workdir=workdirs/markov_exact_local_student
"""

from mixture_dd.configs import markov_exact_distill


def get_config():
  c = markov_exact_distill.get_config()
  # latent_scope: "global" (the paper) | "blocks" (latent_dim blocks; must divide length 32).
  # latent_positions: "none" (the paper) | "learned" (a student-only position embedding).
  c.model.update(latent_dim=8, latent_scope="blocks", latent_positions="learned")
  # delta: "const" | "loguniform" | "min_frac" (min(delta_lo, delta_frac * t): t / 2 here).
  # latent_sampling: "iid" (the paper) | "stratified" (one latent per stratum of [0, 1]).
  c.distill.update(
    delta="min_frac", delta_lo=0.99, delta_hi=0.99, delta_frac=0.5, latent_sampling="stratified"
  )
  return c
