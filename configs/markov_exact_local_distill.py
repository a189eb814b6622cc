"""Di4C student of the Markov chain's exact teacher with local latents (not in the paper).

configs/markov_exact_distill.py with two changes, each measured on this chain (1500 steps, 2
CPU cores, seed 0; README "Markov chain", docs/results/markov_exact/cpu1500_*.md):
  * local latents (model.latent_scope "blocks", latent_dim 8: eight blocks of four positions,
    each with its own lambda coordinate, so the student is a product of eight block mixtures;
    networks.BlockLatentPath): the chain's correlation is local, and one lambda shared by 32
    positions expressed a few per cent of it;
  * Delta = t / 2 (distill.delta "min_frac" with delta_frac 0.5 under a 0.99 cap): the
    consistency target is a two-step sampler's law instead of a 0.05 step back.
Student pair_tv at N = 1 / 2 / 4 / 8: 0.2467 / 0.1480 / 0.0942 / 0.0725 (training seed 0) and
0.2517 / 0.1527 / 0.0985 / 0.0763 (seed 1), against the exact teacher's 0.2556 / 0.1547 /
0.0972 / 0.0725 at the same N (and the global-latent student's 0.2684 / 0.1679 / 0.1082 /
0.0833): better than its teacher at N = 1 on both seeds (by 4.6 and 2.1 standard errors), the
teacher within 1.5 at N = 4 and 8; never the teacher at 2N.

  python -m launch.distill --config=configs/markov_exact_local_distill.py \
      --workdir=workdirs/markov_exact_local_student
"""

from mixture_dd.configs import markov_exact_distill


def get_config():
  c = markov_exact_distill.get_config()
  # latent_scope: "global" (the paper) | "blocks" (latent_dim blocks; must divide length 32).
  c.model.update(latent_dim=8, latent_scope="blocks")
  # delta: "const" | "loguniform" | "min_frac" (min(delta_lo, delta_frac * t): t / 2 here).
  c.distill.update(delta="min_frac", delta_lo=0.99, delta_hi=0.99, delta_frac=0.5)
  return c
