"""Masked-diffusion teacher on scikit-learn's digits (8x8, 17 grey levels).

About 8 minutes on 2 idle CPU cores (the demo's first stage): 2400 steps
reach FD 5-7 at 16-32 steps with about 73 % of samples recognised with
probability > 0.9 by the reference classifier (the data's own rate: 97 %);
the earlier 1000-step teacher gave FD 33-35, hardly recognisable digits.
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
  c.train.update(
    batch_size=64, num_steps=2400, log_every=200, ckpt_every=800, sample_every=0, sample_steps=64
  )
  if scale == "ci":
    c.model.update(width=32, depth=1, heads=2)
    # 60 steps (a few seconds), so that a test can preempt it mid-way.
    c.train.update(batch_size=16, num_steps=60, log_every=10, ckpt_every=30, sample_every=0)
  elif scale != "full":
    raise ValueError(f"configs/digits.py:{scale}: choose full or ci")
  return c
