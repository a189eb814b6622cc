"""Pictures and text of samples: PNG grids for images, text files for text."""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

from mixture_dd.data import pipeline


def image_grid(tokens, spec, cols: int | None = None) -> np.ndarray:
  """tokens `[n, D]` -> one float image `[rows*h, cols*w(, c)]` in [0, 1]."""
  tokens = np.asarray(tokens)
  n = len(tokens)
  shape = tuple(spec.image_shape)
  imgs = tokens.reshape((n,) + shape).astype(np.float32) / max(spec.vocab_size - 1, 1)
  if len(shape) == 3 and shape[-1] == 1:
    imgs = imgs[..., 0]
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  h, w = imgs.shape[1:3]
  pad = 1
  grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad) + imgs.shape[3:], np.float32)
  for i, im in enumerate(imgs):
    r, c = divmod(i, cols)
    grid[
      pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w
    ] = im
  return grid


def save_image_grid(tokens, spec, path: str, title: str | None = None, cols: int | None = None):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  grid = image_grid(tokens, spec, cols)
  fig, ax = plt.subplots(figsize=(4, 4 * grid.shape[0] / grid.shape[1] + (0.4 if title else 0)))
  ax.imshow(
    grid, cmap="gray_r" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
  )
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=9)
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)


def save_panels(panels: list[tuple[str, np.ndarray]], spec, path: str, cols: int = 8):
  """Side-by-side sample grids, one panel per (title, tokens [n, D])."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
  for ax, (title, toks) in zip(np.atleast_1d(axes), panels):
    grid = image_grid(toks, spec, cols)
    ax.imshow(
      grid, cmap="gray_r" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
    )
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def save_samples(tokens, spec, prefix: str, title: str | None = None) -> list[str]:
  """Writes prefix.npz always, plus prefix.png (images) or prefix.txt (text)."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  tokens = np.asarray(tokens)
  np.savez_compressed(prefix + ".npz", tokens=tokens)
  written = [prefix + ".npz"]
  if spec.kind == "image" and spec.image_shape is not None:
    save_image_grid(tokens, spec, prefix + ".png", title)
    written.append(prefix + ".png")
  elif spec.kind == "text":
    texts = pipeline.decode_text(spec, tokens)
    with open(prefix + ".txt", "w") as f:
      for i, s in enumerate(texts):
        f.write(f"--- sample {i} ---\n{s}\n")
    written.append(prefix + ".txt")
  else:
    with open(prefix + ".txt", "w") as f:
      for row in tokens:
        f.write(" ".join(map(str, row)) + "\n")
    written.append(prefix + ".txt")
  return written


def sample_hook(sample_fn: Callable, spec, tag: str, num: int) -> Callable:
  """A trainer's sample hook: (state, step, workdir) -> None.

  Saves `min(num, 64)` samples of the EMA weights (one grid),
  sample_fn(params, key, num) -> tokens `[num, length]` with key(step), as
  workdir/samples/<tag>_<step>.* (`save_samples`; process 0).
  """
  num = min(num, 64)

  def hook(state, step, workdir):
    if jax.process_index() != 0:
      return
    x = sample_fn(state.ema_params, jax.random.key(step), num)
    save_samples(np.asarray(x), spec, os.path.join(workdir, "samples", f"{tag}_{step:07d}"))

  return hook
