"""Di4C student of the digits teacher (the demo's second stage).

  python -m launch.distill --config=configs/digits_distill.py \
      --workdir=workdirs/demo/student --config.teacher.workdir=workdirs/demo/teacher
di4c-d (data term on, alpha as tauLDR's) with MaskGIT-like fixed Delta;
L = 16 latents. `:ci` is the seconds-long variant the tests run.
"""

from mixture_dd import configuration


def get_config(scale: str = "full"):
  c = configuration.distill_base_config("sdtt")
  c.teacher.update(kind="network", workdir="workdirs/demo/teacher")
  c.data.name = "digits"  # a teacher of another data set is refused
  c.distill.update(
    num_latents=16,
    t_sampling="uniform",
    delta="const",
    delta_lo=0.05,
    delta_hi=0.05,
    distill_threshold=0.05,
    distill_weight=1.0,
    data_weight=1.0,
    alpha_scale=1.0,
    student_start="centred",
    latent_init_scale=1.0,
  )
  c.optim.update(lr=3e-4, warmup_steps=20, ema_decay=0.99, schedule="cosine")
  # B x L = 128 student passes a step: about 0.5-1 s on a 2-core CPU.
  c.train.update(batch_size=8, num_steps=600, log_every=50, ckpt_every=200, sample_every=0)
  if scale == "ci":
    c.distill.num_latents = 4
    c.train.update(batch_size=8, num_steps=6, log_every=3, ckpt_every=6)
  elif scale != "full":
    raise ValueError(f"configs/digits_distill.py:{scale}: choose full or ci")
  return c
