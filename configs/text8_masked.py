"""Full-size text8 masked-diffusion teacher (MDLM-like, for accelerators).

Mirrors the MDLM / MD4 text8 teachers: characters (space + a..z, 27 symbols)
in chunks of 256, absorbing ("masked") diffusion with the log-linear
schedule and the continuous-time ELBO, a DiT of width 768, depth 12, 12 heads
with rotary positions (about 130M parameters, the adaLN time conditioning
included), AdamW at 3e-4 with 2500 linear warm-up steps then constant, EMA
0.9999, batch 512. Di4C distils an MDLM teacher of this shape. Weight decay
is 0 as in MDLM's released configs.

text8 needs network to build once (see `mixture_dd.data.builders.prepare`):
  python -c "from mixture_dd.data import builders; builders.prepare('text8', 'DIR', length=256)"
  python -m launch.train --config=configs/text8_masked.py --workdir=workdirs/text8 \
      --config.data.data_dir=DIR
Its student (configs/text8_sdtt_distill.py, whose config.teacher.workdir is workdirs/text8):
  python -m launch.distill --config=configs/text8_sdtt_distill.py \
      --workdir=workdirs/text8_student --config.data.data_dir=DIR
"""

from mixture_dd import configuration


def get_config():
  c = configuration.base_config()
  c.data = configuration.data_config("text8", length=256)
  c.process.update(name="masked", schedule="loglinear")
  c.model.update(
    width=768,
    depth=12,
    heads=12,
    mlp_ratio=4,
    dropout=0.1,
    positions="rope",
    class_conditional=False,
    dtype="bfloat16",
  )
  c.optim.update(
    lr=3e-4,
    warmup_steps=2500,
    weight_decay=0.0,
    b1=0.9,
    b2=0.999,
    clip=1.0,
    ema_decay=0.9999,
    schedule="constant",
  )
  c.train.update(
    batch_size=512,
    num_steps=1_000_000,
    log_every=1000,
    ckpt_every=10_000,
    keep=3,
    sample_every=50_000,
    sample_steps=256,
    num_samples=64,
  )
  return c
