"""Masked teacher on a tiny correlated family (S=3, D=3): exact TV is computable.

python -m launch.train --config=configs/tiny.py --workdir=workdirs/tiny_teacher
"""

from mixture_dd import configuration


def get_config():
  c = configuration.base_config()
  c.data = configuration.data_config(
    "tiny", family="dirichlet", vocab_size=3, length=3, seed=0, num_train=20000, num_test=2000
  )
  c.process.update(name="masked", schedule="linear")
  c.model.update(width=64, depth=2, heads=4, positions="learned")
  c.optim.update(lr=1e-3, warmup_steps=50, ema_decay=0.99)
  c.train.update(
    batch_size=256, num_steps=1500, log_every=100, ckpt_every=500, sample_every=0, sample_steps=16
  )
  return c
