"""Full-size CIFAR-10 pixel teacher with the Gaussian-rate CTMC (for accelerators).

Mirrors the teacher of Di4C's CIFAR-10 experiment, tauLDR's (Campbell et al.,
2022) CIFAR-10 model: each of the 3072 sub-pixels is a token over 256 ordinal
levels, forward process the Gaussian-rate CTMC with rate_sigma=6,
Q_sigma=512, time_base=3, time_exp=100, training times t >= 0.01, dropout
0.1, Adam at 2e-4 with batch 128 and gradient-norm clip 1. Its student
(configs/cifar10_tauldr_distill.py) trains at this dropout too, as in the
official Di4C code (0.1 for both). What differs: tauLDR's network
is a convolutional U-Net; ours is a DiT (width 768, depth 12, 12 heads, about
the size of DiT-B) over the flattened 32x32x3 sequence, with learned absolute
positions because 1-D rotary positions know nothing of the image's 2-D
layout. Its loss is the x0 cross-entropy (see `losses.teacher_loss`), not
tauLDR's CTMC ELBO. Attention over 3072 tokens makes this an accelerator
config: about 0.9 TFLOP per example per forward pass, 3x that to train.

Needs CIFAR-10 prepared with TFDS (see `mixture_dd.data.pipeline.load`):
  python -m launch.train --config=configs/cifar10_gaussian.py \
      --workdir=workdirs/cifar10_teacher --config.data.data_dir=DIR
(the workdir configs/cifar10_tauldr_distill.py reads its teacher from).
"""

import ml_collections

from mixture_dd import configuration


def get_config():
  c = configuration.base_config()
  c.data = configuration.data_config("cifar10")
  # A fresh section: the Gaussian process takes no `schedule`.
  c.process = ml_collections.ConfigDict(
    dict(
      name="gaussian", vocab_size=None, rate_sigma=6.0, q_sigma=512.0, time_base=3.0, time_exp=100.0
    )
  )
  c.model.update(
    width=768,
    depth=12,
    heads=12,
    mlp_ratio=4,
    dropout=0.1,  # tauLDR's; its student inherits it (runs.resolve)
    positions="learned",
    class_conditional=False,
    dtype="bfloat16",
  )
  c.loss.t_min = 0.01
  # Plain Adam as in tauLDR: AdamW with zero weight decay, constant after warm-up.
  c.optim.update(
    lr=2e-4,
    warmup_steps=5000,
    weight_decay=0.0,
    b1=0.9,
    b2=0.999,
    clip=1.0,
    ema_decay=0.9999,
    schedule="constant",
  )
  c.train.update(
    batch_size=128,
    num_steps=1_000_000,
    log_every=1000,
    ckpt_every=10_000,
    keep=3,
    sample_every=50_000,
    sample_steps=256,
    num_samples=64,
  )
  return c
