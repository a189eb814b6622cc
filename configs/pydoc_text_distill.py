"""Di4C student of the character-level text teacher (configs/pydoc_text.py).

  python -m launch.train --config=configs/pydoc_text.py --workdir=workdirs/text_teacher
  python -m launch.distill --config=configs/pydoc_text_distill.py --workdir=workdirs/text_student
About 12 minutes on 2 CPU cores. SDTT's preset (one t per batch, tiny Delta)
with the data term, as for OpenWebText.
"""
from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("sdtt")
  c.teacher.update(kind="network", workdir="workdirs/text_teacher")
  c.distill.update(num_latents=16, data_weight=1.0, latent_init_scale=0.1)
  c.optim.update(lr=3e-4, warmup_steps=20, ema_decay=0.99, schedule="cosine")
  c.train.update(batch_size=16, num_steps=400, log_every=50, ckpt_every=200)
  return c
