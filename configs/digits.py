"""Masked-diffusion teacher on scikit-learn's digits (8x8, 17 grey levels).

About 6.5 minutes on 2 idle CPU cores (the demo's first stage, 2026-11-30): 2400
steps reach FD 7.5 ± 0.6 at 16 steps on the reference classifier's features,
half of the samples recognised as a digit with p > 0.9 (the test digits' own
FD 5.1, recognised 93 %). A 1600-step teacher scores 10.3 at 16 steps, and the
demo's student loses its claim on it (docs/results/digits.md).
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
