"""Di4C on a tiny family with the EXACT ideal product denoiser as teacher.

Exact TV of student and teacher samplers is computable (S=3, D=3).
  python -m launch.distill --config=configs/tiny_distill.py --workdir=workdirs/tiny_student
"""

import ml_collections

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("cpu_small")
  c.teacher.kind = "ideal"
  c.data = configuration.data_config(
    "tiny", family="dirichlet", vocab_size=3, length=3, seed=0, num_train=20000, num_test=2000
  )
  c.process = ml_collections.ConfigDict(dict(name="masked", vocab_size=None, schedule="linear"))
  base = configuration.base_config()
  c.model = base.model
  c.model.update(width=64, depth=2, heads=4, positions="learned")
  # The small CPU recipe, whose di4c-d matters here: with a freshly initialised student the
  # data term (its exact teacher-marginal KL at every t, and the correlation of real x0 with
  # full weight, alpha_scale=1 as in tauLDR) is what gets it off the ground fast. L = 32 and
  # distillation below t = 0.02; a fresh student takes any start (here N(0, 0.3^2)).
  c.distill.update(
    num_latents=32, distill_threshold=0.02, student_start="normal", latent_init_scale=0.3
  )
  c.optim.update(lr=2e-3, warmup_steps=20, ema_decay=0.0, schedule="cosine")
  c.train.update(batch_size=32, num_steps=1200, log_every=100, ckpt_every=600)
  return c
