"""Masked teacher on characters of CPython's pydoc topics (96 symbols, D=64).

Sized for a 2-core CPU: about 9 minutes (0.35 s/step).
  python -m launch.train --config=configs/pydoc_text.py --workdir=workdirs/pydoc_teacher
Its student (configs/pydoc_text_distill.py, whose config.teacher.workdir is that workdir):
  python -m launch.distill --config=configs/pydoc_text_distill.py --workdir=workdirs/pydoc_student
"""

from mixture_dd import configuration


def get_config():
  c = configuration.base_config()
  c.data = configuration.data_config("pydoc_text", length=64)
  c.process.update(name="masked", schedule="loglinear")
  c.model.update(width=96, depth=3, heads=4, positions="rope")
  c.optim.update(lr=1e-3, warmup_steps=100, ema_decay=0.999)
  c.train.update(
    batch_size=64, num_steps=1500, log_every=100, ckpt_every=500, sample_every=1500, sample_steps=64
  )
  return c
