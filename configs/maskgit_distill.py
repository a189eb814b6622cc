"""Full-size preset: Di4C in the MaskGIT setup (ImageNet VQ tokens, class-conditional).

docs/method.md sec. 4, MaskGIT column: progress r ~ U[0, 1], Delta = 0.05 in r, distillation only
for r >= 0.95 (t <= 0.05) on the same x_t with weight 20, L = 32, AdamW 1e-5, betas
(0.9, 0.96), weight decay 1e-5, clip 1.0. di4c-d, the official default run (sony/di4c's
MaskGIT README: "default: di4c-d"; alpha_t sigmoid, alpha_const 0.1): the correlation data
term is on with alpha = 0.1 sigmoid(20 (0.5 - r)). The consistency target's teacher step is
MaskGIT's confidence step with Gumbel temperature 4.5 (1 - r T / (T - 1)), T = 8 teacher
steps. The student's dropout and label dropout are its teacher's (0.1 in the official runs).

The teacher is the configs/maskgit.py run of that file's docstring, in workdirs/maskgit_teacher
(or any class-conditional masked run of ours with the arccos schedule and label dropout, for
guidance, trained at dropout 0.1: pass --config.teacher.workdir):
  python -m launch.train --config=configs/maskgit.py --workdir=workdirs/maskgit_teacher
  python -m launch.distill --config=configs/maskgit_distill.py --workdir=workdirs/maskgit_student \
      --config.teacher.workdir=workdirs/maskgit_teacher
and sample with `launch.sample --sampler=confidence --label=... --guidance=...`.
"""

import ml_collections

from mixture_dd import configuration


def get_config():
  c = configuration.distill_base_config("maskgit")
  c.teacher.update(kind="network", workdir="workdirs/maskgit_teacher")
  # di4c-d: the preset's alpha_scale = 0.1 weighs the correlation term.
  c.distill.update(data_weight=1.0, latent_chunks=4)
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
  # MaskGIT keeps no EMA: sample from the raw weights (and so does a di4c^2
  # round that takes this student as its teacher).
  c.train.eval_weights = "raw"
  # bfloat16 activations on the accelerator (parameters stay float32, so the
  # teacher's checkpoint loads unchanged); dropout is not set: it is the teacher's.
  c.model = ml_collections.ConfigDict(dict(dtype="bfloat16"))
  return c
