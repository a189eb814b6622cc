"""Masked teacher on a first-order Markov chain (S=8, D=32): exact likelihood known.

The chain's entropy rate is known exactly, so the teacher's ELBO per token can
be compared against the true -log p(x) / D. Sized for a 2-core CPU: about
8 minutes (0.3 s/step).
  python -m launch.train --config=configs/markov.py --workdir=workdirs/markov_teacher
"""

from mixture_dd import configuration


def get_config():
  c = configuration.base_config()
  c.data = configuration.data_config(
    "markov", vocab_size=8, length=32, seed=0, num_train=20000, num_test=2000
  )
  c.process.update(name="masked", schedule="loglinear")
  c.model.update(width=96, depth=3, heads=4, positions="rope")
  c.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.999)
  c.train.update(
    batch_size=128,
    num_steps=1500,
    log_every=100,
    ckpt_every=500,
    sample_every=1500,
    sample_steps=32,
  )
  return c
