"""Full-size preset: Di4C in the SDTT / OpenWebText setup, on text8 characters.

method.md sec. 4, SDTT column: one t per batch (w.p. 0.3 U[0, 0.02], else U[0.02, 1]),
Delta = min(1/1024, t/2), distillation only for t < 0.02, consistency otherwise,
alpha = 0.1 sigmoid(20 (t - 0.5)), L = 16, AdamW 3e-5 with 2500 warm-up steps, clip 1.0.
Teacher: a configs/text8_masked.py run.
"""

import ml_collections

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("sdtt")
  c.teacher.update(kind="network", workdir="workdirs/text8_teacher")
  c.distill.update(latent_chunks=4)
  c.optim.update(
    lr=3e-5, warmup_steps=2500, weight_decay=0.0, clip=1.0, ema_decay=0.9999, schedule="constant"
  )
  c.train.update(
    batch_size=128,
    num_steps=100_000,
    log_every=100,
    ckpt_every=5000,
    sample_every=0,
    sample_steps=32,
  )
  # SDTT keeps a 0.9999 EMA but samples from the raw weights.
  c.train.eval_weights = "raw"
  c.model = ml_collections.ConfigDict(dict(dropout=0.1))  # the official student's dropout
  return c
