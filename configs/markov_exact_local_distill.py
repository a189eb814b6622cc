"""Di4C student of the Markov chain's exact teacher with local latents (not in the paper).

configs/markov_exact_distill.py with five changes, each measured on this chain (1500 steps, 2
CPU cores, training seeds 0 and 1; docs/results/markov.md, docs/results/markov_exact/cpu1500_*.md):
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
    embedding for the student lifts that;
  * blocks that move between steps (model.latent_shift "random"): within a step a local student
    draws the pairs across its block boundaries independently, as the teacher draws every pair
    (benchmarks/block_boundaries.py); rotated blocks put the boundaries elsewhere at each step.
Student pair_tv at N = 1 / 2 / 4 / 8: 0.1530 / 0.1063 / 0.0771 / 0.0659 (training seed 0) and
0.1539 / 0.1074 / 0.0785 / 0.0697 (seed 1), against the exact teacher's 0.2556 / 0.1547 /
0.0972 / 0.0725 at the same N and 0.1547 / 0.0972 / 0.0725 / 0.0637 at 2N: the teacher at 2N at
N = 1 on both seeds, 82-84 % of the way from the teacher at N to the teacher at 2N at N = 2,
76-81 % at N = 4; better than the teacher at the same N everywhere. With fixed blocks: 0.1522 /
0.1068 / 0.0807 / 0.0685 and 0.1538 / 0.1051 / 0.0814 / 0.0700 (64-67 % at N = 4); without the
position embedding as well: 0.2419 / 0.1400 / 0.0924 / 0.0754 and 0.2450 / 0.1402 / 0.0896 /
0.0751.

  python -m launch.distill --config=configs/markov_exact_local_distill.py \
      --workdir=workdirs/markov_exact_local_student
"""

from mixture_dd.configs import markov_exact_distill


def get_config():
  c = markov_exact_distill.get_config()
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
  return c
