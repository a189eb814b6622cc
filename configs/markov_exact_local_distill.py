"""Di4C student of the Markov chain's exact teacher with local latents (not in the paper).

configs/markov_exact_distill.py with three changes, each measured on this chain (1500 steps, 2
CPU cores, training seeds 0 and 1; README "Markov chain", docs/results/markov_exact/cpu1500_*.md):
  * local latents (model.latent_scope "blocks", latent_dim 8: eight blocks of four positions,
    each with its own lambda coordinate, so the student is a product of eight block mixtures;
    networks.BlockLatentPath): the chain's correlation is local, and one lambda shared by 32
    positions expressed a few per cent of it;
  * Delta = t / 2 (distill.delta "min_frac" with delta_frac 0.5 under a 0.99 cap): the
    consistency target is a two-step sampler's law instead of a 0.05 step back;
  * stratified latents (distill.latent_sampling "stratified"): each example's 16 latents one
    per sixteenth of [0, 1], a tighter likelihood estimate; the mixture then expresses 1.5 to
    3 times the correlation of iid latents.
Student pair_tv at N = 1 / 2 / 4 / 8: 0.2419 / 0.1400 / 0.0924 / 0.0754 (training seed 0) and
0.2450 / 0.1402 / 0.0896 / 0.0751 (seed 1), against the exact teacher's 0.2556 / 0.1547 /
0.0972 / 0.0725 at the same N and 0.1547 / 0.0972 / 0.0725 / 0.0637 at 2N: better than its
teacher at N = 1, 2 and 4 on both seeds (by 7.5 / 7.0 / 2.1 and 5.7 / 6.7 / 3.3 standard errors
of the difference), 1.1 worse at N = 8 on both; never the teacher at 2N (at N = 2 a quarter of
the way). With iid latents: 0.2467 / 0.1480 / 0.0942 / 0.0725 and 0.2517 / 0.1527 / 0.0985 /
0.0763.

  python -m launch.distill --config=configs/markov_exact_local_distill.py \
      --workdir=workdirs/markov_exact_local_student
"""

from mixture_dd.configs import markov_exact_distill


def get_config():
  c = markov_exact_distill.get_config()
  # latent_scope: "global" (the paper) | "blocks" (latent_dim blocks; must divide length 32).
  c.model.update(latent_dim=8, latent_scope="blocks")
  # delta: "const" | "loguniform" | "min_frac" (min(delta_lo, delta_frac * t): t / 2 here).
  # latent_sampling: "iid" (the paper) | "stratified" (one latent per stratum of [0, 1]).
  c.distill.update(
    delta="min_frac", delta_lo=0.99, delta_hi=0.99, delta_frac=0.5, latent_sampling="stratified"
  )
  return c
