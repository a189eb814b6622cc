"""Di4C student of the Markov chain's exact teacher with coupled blocks (not in the paper).

configs/markov_exact_local_distill.py (8 rotating blocks of 4, Delta = t / 2, stratified
latents, the student position embedding; 1500 steps) with two changes:
  * every position is also conditioned on a second partition's latent, the blocks moved by
    half a block (model.latent_coupling "halves", networks.CoupledLatentPath; docs/method.md
    section 3), so the pairs across a block boundary, which a local student draws
    independently within a step, share a latent too. lam has 16 coordinates (8 A-blocks, then
    8 B-blocks); the loss scores all 16 x 16 latent pairs from 16 passes of each path (the
    cycle likelihood);
  * the teacher-marginal term at 4 times the official weight (distill.marginal_weight 4):
    at weight 1 the student's own marginals drifted, a floor its many-step samples hit (pair_tv
    0.0623 at N = 32 against the teacher's 0.0562; 39-75 % of the way at N = 8).
Measured (1500 steps, 2 CPU cores, training seeds 0 and 1; docs/results/markov.md "Coupled blocks",
docs/results/markov_exact/cpu1500_blocks8_half_strat_lp_shift_coupled_m4{,_seed1}.md): pair_tv
at N = 1 / 2 / 4 / 8 0.1271 / 0.0911 / 0.0719 / 0.0634 (seed 0) and 0.1287 / 0.0939 / 0.0719 /
0.0625 (seed 1), against the exact teacher's 0.2556 / 0.1547 / 0.0972 / 0.0725 at N and
0.1547 / 0.0972 / 0.0725 / 0.0637 at 2N: at or past the teacher at 2N at every N on both seeds
(102-127 % of the way). With marginal_weight 1: 0.1284 / 0.0947 / 0.0733 / 0.0690 and 0.1311 /
0.0964 / 0.0786 / 0.0659 (..._coupled{,_seed1}.md).

  python -m launch.distill --config=configs/markov_exact_coupled_distill.py \
      --workdir=workdirs/markov_exact_coupled_student
"""

from mixture_dd.configs import markov_exact_local_distill


def get_config():
  c = markov_exact_local_distill.get_config()
  # latent_coupling: "none" (a product of block mixtures) | "halves" (a second partition
  # half a block off; needs latent_scope "blocks" and an even block size: 32 / 8 = 4).
  c.model.latent_coupling = "halves"
  c.distill.marginal_weight = 4.0  # >= 0; 1 is the official weight (every setup of sony/di4c)
  return c
