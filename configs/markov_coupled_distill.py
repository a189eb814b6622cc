"""Di4C student of the learned Markov teacher with coupled blocks (not in the paper).

configs/markov_local_distill.py (the learned configs/markov.py teacher; 8 rotating blocks of 4,
Delta = t / 2, stratified latents, the position embedding, the latent path at 10x; 600 steps
at 3e-4) with one change: model.latent_coupling "halves", every position also conditioned on
a second partition's latent, half a block off (configs/markov_exact_coupled_distill.py,
docs/method.md section 3). Measured (README "Markov chain", learned teacher;
docs/results/markov_learned/local_lp_lr10_shift_coupled{,_seed1}/): pair_tv at N = 1 / 2 / 4 / 8
0.1330 / 0.1048 / 0.0841 / 0.0745 (training seed 0) and 0.1373 / 0.1051 / 0.0837 / 0.0768
(seed 1) against this teacher's 0.2678 / 0.1627 / 0.1042 / 0.0802 at N and 0.1627 / 0.1042 /
0.0802 / 0.0661 at 2N: past the teacher at 2N at N = 1 and at it at N = 2 (99 % of the way, both
seeds; the local config: 72-78 %), 84-85 % of the way at N = 4.

  python -m launch.train --config=configs/markov.py --workdir=workdirs/markov_teacher
  python -m launch.distill --config=configs/markov_coupled_distill.py \
      --workdir=workdirs/markov_coupled_student
"""

from mixture_dd.configs import markov_local_distill


def get_config():
  c = markov_local_distill.get_config()
  # latent_coupling: "none" (a product of block mixtures) | "halves" (a second partition
  # half a block off; needs latent_scope "blocks" and an even block size: 32 / 8 = 4).
  c.model.latent_coupling = "halves"
  return c
