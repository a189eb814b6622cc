"""Full-size preset: Di4C in the MaskGIT setup (ImageNet VQ tokens, class-conditional).

method.md sec. 4, MaskGIT column: progress r ~ U[0, 1], Delta = 0.05 in r, distillation only
for r >= 0.95 (t <= 0.05) on the same x_t with weight 20, alpha = 0.1 sigmoid(20 (0.5 - r)),
L = 32, AdamW 1e-5, betas (0.9, 0.96), weight decay 1e-5, clip 1.0. The teacher is any
class-conditional masked run of ours with the arccos schedule and label dropout (for
guidance); sample with `launch.sample --sampler=confidence --label=... --guidance=...`.
"""

import ml_collections

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("maskgit")
  c.teacher.update(kind="network", workdir="workdirs/maskgit_teacher")
  c.distill.update(latent_chunks=4)
  c.optim.update(
    lr=1e-5,
    b1=0.9,
    b2=0.96,
    weight_decay=1e-5,
    clip=1.0,
    warmup_steps=0,
    ema_decay=0.9999,
    schedule="constant",
  )
  c.train.update(
    batch_size=64, num_steps=100_000, log_every=100, ckpt_every=5000, sample_every=0, sample_steps=4
  )
  # MaskGIT keeps no EMA: sample from the raw weights.
  c.train.eval_weights = "raw"
  # The official student's dropout; bfloat16 activations on the accelerator
  # (parameters stay float32, so the teacher's checkpoint loads unchanged).
  c.model = ml_collections.ConfigDict(dict(dropout=0.1, dtype="bfloat16"))
  return c
