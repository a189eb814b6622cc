"""Full-size MaskGIT-like teacher: class-conditional masked diffusion (for accelerators).

The shape of MaskGIT's bidirectional transformer (Chang et al., 2022) over ImageNet VQ tokens:
width 768, depth 24, 16 heads, MLP 3072, learned positions, arccos masking, class-conditional
with label dropout 0.1 (for classifier-free guidance), dropout 0.1, AdamW 1e-4 with betas
(0.9, 0.96) and weight decay 0.045, batch 256. Its student is configs/maskgit_distill.py (the
MaskGIT preset), which trains at this dropout and label dropout.

The data is base_config()'s, digits (class-conditional, 10 classes): the file runs anywhere,
but MaskGIT's own data (16 x 16 = 256 VQGAN codes of 1024 per image, 1000 classes) is not in
the registry; a data set of one's own is one `registry.DataSet` entry. benchmarks/accelerator.py
times this network on random tokens of MaskGIT's shape.
  python -m launch.train --config=configs/maskgit.py --workdir=workdirs/maskgit_teacher
(the workdir configs/maskgit_distill.py reads its teacher from).
"""

import ml_collections

from mixture_dd import configuration


def get_config():
  c = configuration.base_config()  # data: digits (see the docstring)
  c.process = ml_collections.ConfigDict(
    dict(
      name="masked",  # "masked" | "uniform" | "gaussian"
      vocab_size=None,  # None: the data's
      schedule="arccos",  # "arccos" | "loglinear" | "linear" | "cosine"
    )
  )
  c.model.update(
    width=768,  # a multiple of heads
    depth=24,
    heads=16,
    mlp_ratio=4,
    dropout=0.1,  # in [0, 1); its student trains at the same
    positions="learned",  # "learned" | "rope"
    class_conditional=True,  # needs a data set with labels
    label_dropout=0.1,  # in [0, 1): the null-label rate that guidance needs
    dtype="bfloat16",  # activations: "bfloat16" | "float32" (parameters stay float32)
  )
  c.optim.update(
    lr=1e-4,
    warmup_steps=5000,
    weight_decay=0.045,
    b1=0.9,
    b2=0.96,
    clip=1.0,  # > 0: the global gradient-norm clip
    ema_decay=0.999,  # in [0, 1)
    schedule="cosine",  # "cosine" | "constant"
  )
  c.train.update(batch_size=256)
  return c
