"""Di4C student of the digits teacher (the demo's second stage).

  python -m launch.distill --config=configs/digits_distill.py \
      --workdir=workdirs/demo/student --config.teacher.workdir=workdirs/demo/teacher
The small CPU recipe (`configuration.PRESETS["cpu_small"]`: per-example uniform t, fixed
Delta = 0.05, distillation below t = 0.05, di4c-d with tauLDR's alpha, L = 16 latents).
`:ci` is the seconds-long variant the tests run.
"""

from mixture_dd import configuration


def get_config(scale: str = "full"):
  c = configuration.distill_base_config("cpu_small")  # with the default (centred) start
  c.teacher.update(kind="network", workdir="workdirs/demo/teacher")
  c.data.name = "digits"  # a teacher of another data set is refused
  c.optim.update(lr=3e-4, warmup_steps=20, ema_decay=0.99, schedule="cosine")
  # B x L = 128 student passes a step: about 0.5-1 s on a 2-core CPU.
  c.train.update(batch_size=8, num_steps=600, log_every=50, ckpt_every=200, sample_every=0)
  if scale == "ci":
    c.distill.num_latents = 4
    c.train.update(batch_size=8, num_steps=6, log_every=3, ckpt_every=6)
  elif scale != "full":
    raise ValueError(f"configs/digits_distill.py:{scale}: choose full or ci")
  return c
