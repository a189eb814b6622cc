"""Di4C student of the Markov chain's exact teacher with coupled blocks (not in the paper).

configs/markov_exact_local_distill.py (8 rotating blocks of 4, Delta = t / 2, stratified
latents, the student position embedding; 1500 steps) with one change: every position is also
conditioned on a second partition's latent, the blocks moved by half a block
(model.latent_coupling "halves", networks.CoupledLatentPath; docs/method.md section 3), so
the pairs across a block boundary, which a local student draws independently within a step,
share a latent too. lam has 16 coordinates (8 A-blocks, then 8 B-blocks); the loss scores
all 16 x 16 latent pairs from 16 passes of each path (the cycle likelihood).
Measured (1500 steps, 2 CPU cores, training seeds 0 and 1; README "Markov chain",
docs/results/markov_exact/cpu1500_blocks8_half_strat_lp_shift_coupled{,_seed1}.md): pair_tv
at N = 1 / 2 / 4 / 8 0.1284 / 0.0947 / 0.0733 / 0.0690 (seed 0) and 0.1311 / 0.0964 / 0.0786 /
0.0659 (seed 1), against the exact teacher's 0.2556 / 0.1547 / 0.0972 / 0.0725 at N and
0.1547 / 0.0972 / 0.0725 / 0.0637 at 2N: past the teacher at 2N at N = 1 and at it at N = 2 on
both seeds (the local config: 82-84 % of the way at N = 2), 97 % / 75 % of the way at N = 4.

  python -m launch.distill --config=configs/markov_exact_coupled_distill.py \
      --workdir=workdirs/markov_exact_coupled_student
"""

from mixture_dd.configs import markov_exact_local_distill


def get_config():
  c = markov_exact_local_distill.get_config()
  # latent_coupling: "none" (a product of block mixtures) | "halves" (a second partition
  # half a block off; needs latent_scope "blocks" and an even block size: 32 / 8 = 4).
  c.model.latent_coupling = "halves"
  return c
