"""Masked-diffusion teacher on scikit-learn's digits (8x8, 17 grey levels).

About 6 minutes on a 2-core CPU (the demo's first stage):
  python -m launch.train --config=configs/digits.py --workdir=workdirs/demo/teacher
`configs/digits.py:ci` is the seconds-long variant the tests run.
"""
from mixture_dd import configuration


def get_config(scale: str = "full"):
  c = configuration.base_config()
  c.data = configuration.data_config("digits", levels=17)
  c.process.update(name="masked", schedule="loglinear")
  c.model.update(width=96, depth=3, heads=4, positions="learned")
  c.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.995)
  c.train.update(batch_size=64, num_steps=1000, log_every=100, ckpt_every=500,
                 sample_every=500, sample_steps=64)
  if scale == "ci":
    c.model.update(width=32, depth=1, heads=2)
    c.train.update(batch_size=16, num_steps=20, log_every=10, ckpt_every=20, sample_every=0)
  elif scale != "full":
    raise ValueError(f"configs/digits.py:{scale}: choose full or ci")
  return c
