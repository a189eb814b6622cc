"""Small reference models that evaluation metrics are measured with.

  * `DigitsClassifier`: an MLP on 8x8 grey-level digits with an 11th
    "reject" class trained on noise and destroyed digits (`reject_images`),
    so that "recognised" (a digit class with p > 0.9) means something: a
    plain 10-way softmax called 83 % of uniform-noise images a digit with
    p > 0.9. Its penultimate activations feed the Frechet distance (an FID
    for digits) and its digit predictions give class histograms (mode
    coverage).
  * `CharLM`: a small causal transformer over characters. Its likelihood of
    generated samples gives the generative perplexity.

Both are Flax Linen modules whose hyperparameters are read back from the
parameter shapes, so the evaluation functions take only `(params, data)`.
Checkpoints are an orbax `StandardCheckpointer` directory `params/` next to
a `meta.json` with the user's metadata (e.g. test accuracy).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

Params = Any

_META_FILE = "meta.json"
_PARAMS_DIR = "params"


# ----------------------------------------------------------------------------
# Checkpointing (shared).


def _save(directory: str, params: Params, meta: dict) -> None:
  """Writes params and meta into `directory` at once: into a private folder beside it, then
  renamed into place, so a process that finds `directory/params` finds a whole model. When two
  processes train the same reference model at once (two evaluations, or two test workers), the
  first rename wins and the other copy is dropped. A cache is written once: a model already in
  `directory` is kept (delete the folder to retrain)."""
  directory = os.path.abspath(directory)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  tmp = f"{directory}.tmp-{os.getpid()}-{time.time_ns()}"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, _PARAMS_DIR), jax.device_get(params))
    ckptr.wait_until_finished()
  with open(os.path.join(tmp, _META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  try:
    os.rename(tmp, directory)  # replaces `directory` only if it is an empty folder
    return
  except OSError:
    if os.path.isdir(os.path.join(directory, _PARAMS_DIR)):
      shutil.rmtree(tmp, ignore_errors=True)  # another process saved it first
      return
  # `directory` holds other files but no model: move our model's two entries in.
  for name in (_PARAMS_DIR, _META_FILE):
    os.replace(os.path.join(tmp, name), os.path.join(directory, name))
  shutil.rmtree(tmp, ignore_errors=True)


def _load(directory: str) -> tuple[Params, dict]:
  directory = os.path.abspath(directory)
  params_dir = os.path.join(directory, _PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise ValueError(f"no checkpoint at {params_dir}")
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(params_dir)
  meta_path = os.path.join(directory, _META_FILE)
  meta = {}
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
  return jax.tree_util.tree_map(jnp.asarray, params), meta


# ----------------------------------------------------------------------------
# Digits classifier.

NUM_DIGITS = 10
REJECT = NUM_DIGITS  # label of the reject class
REJECT_KINDS = ("uniform", "marginal", "shuffled", "corrupted", "blurred")


class DigitsClassifier(nn.Module):
  """MLP classifier on flattened 8x8 images in [0, 1].

  Attributes:
    hidden: widths of the hidden layers; the last one is the feature size.
    num_classes: number of labels.
  """

  hidden: Sequence[int] = (128, 64)
  num_classes: int = 10

  def setup(self):
    self.layers = [nn.Dense(w, name=f"hidden_{i}") for i, w in enumerate(self.hidden)]
    self.head = nn.Dense(self.num_classes, name="head")

  def features(self, x: jax.Array) -> jax.Array:
    """Penultimate activations [n, hidden[-1]] of x [n, 64] in [0, 1]."""
    for layer in self.layers:
      x = nn.gelu(layer(x))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    """Logits [n, num_classes] of x [n, 64] in [0, 1]."""
    return self.head(self.features(x))


def _scale_images(images: np.ndarray, levels: int) -> jax.Array:
  images = np.asarray(images)
  if images.ndim != 2 or images.shape[1] != 64:
    raise ValueError(f"images must be [n, 64], got {images.shape}")
  if levels < 2:
    raise ValueError(f"levels must be >= 2, got {levels}")
  if images.size and (images.min() < 0 or images.max() >= levels):
    raise ValueError(
      f"image values must lie in [0, {levels}), got range [{images.min()}, {images.max()}]"
    )
  return jnp.asarray(images, jnp.float32) / (levels - 1)


def _classifier_from_params(params: Params) -> DigitsClassifier:
  p = params["params"]
  n_hidden = sum(1 for k in p if k.startswith("hidden_"))
  hidden = tuple(int(p[f"hidden_{i}"]["kernel"].shape[1]) for i in range(n_hidden))
  return DigitsClassifier(hidden=hidden, num_classes=int(p["head"]["kernel"].shape[1]))


def classifier_logits(params: Params, images: np.ndarray, levels: int) -> np.ndarray:
  """Logits [n, num_classes] for int images [n, 64] with `levels` grey levels."""
  model = _classifier_from_params(params)
  return np.asarray(model.apply(params, _scale_images(images, levels)))


def classifier_features(params: Params, images: np.ndarray, levels: int) -> np.ndarray:
  """Penultimate features [n, k] (float64) for int images [n, 64]."""
  model = _classifier_from_params(params)
  f = model.apply(params, _scale_images(images, levels), method=DigitsClassifier.features)
  return np.asarray(f, np.float64)


def classifier_predict(params: Params, images: np.ndarray, levels: int) -> np.ndarray:
  """Predicted labels [n] for int images [n, 64] (REJECT for a rejected image)."""
  return classifier_logits(params, images, levels).argmax(-1)


def has_reject_class(params: Params) -> bool:
  """Whether a classifier has the reject class (11 outputs)."""
  return _classifier_from_params(params).num_classes == NUM_DIGITS + 1


def classifier_recognised(
  params: Params, images: np.ndarray, levels: int, threshold: float = 0.9
) -> np.ndarray:
  """Bool [n]: the most likely class of each image is a digit, with p > threshold.

  Needs a classifier with the reject class: a 10-way softmax must call
  every image some digit, noise included.
  """
  if not has_reject_class(params):
    raise ValueError(
      "this digits classifier has no reject class (it predates it); recognition needs one. "
      "Delete its directory (it is retrained on first use) or pass another reference_dir."
    )
  probs = jax.nn.softmax(jnp.asarray(classifier_logits(params, images, levels)), -1)
  probs = np.asarray(probs)
  return (probs.argmax(-1) < NUM_DIGITS) & (probs.max(-1) > threshold)


def _blur(images: np.ndarray, levels: int, passes: int = 2) -> np.ndarray:
  """3x3 box blur of [n, 64] images (edges replicated), `passes` times, rounded."""
  x = np.asarray(images, np.float64).reshape(-1, 8, 8)
  for _ in range(passes):
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    x = sum(padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3)) / 9.0
  return np.clip(np.rint(x), 0, levels - 1).reshape(-1, 64).astype(np.int32)


def reject_images(images: np.ndarray, levels: int, num: int, seed: int = 0) -> np.ndarray:
  """`num` images [num, 64] int32 that are not digits, made from `images` [n, 64].

  Equal shares of (`REJECT_KINDS`): uniform noise; independent per-pixel
  draws from the images' pixel marginals (the product of marginals); real
  digits with their 64 pixels permuted; real digits with 30-70 % of the
  pixels replaced by noise; real digits blurred twice by a 3x3 box.
  """
  images = np.asarray(images)
  if images.ndim != 2 or images.shape[1] != 64 or len(images) == 0:
    raise ValueError(f"images must be [n, 64] with n > 0, got {images.shape}")
  rng = np.random.default_rng(seed)
  n = len(images)
  shares = np.diff(np.linspace(0, num, len(REJECT_KINDS) + 1).round().astype(int))
  rows = lambda k: images[rng.integers(0, n, k)]
  out = []
  for kind, k in zip(REJECT_KINDS, shares):
    if kind == "uniform":
      x = rng.integers(0, levels, (k, 64))
    elif kind == "marginal":
      x = images[rng.integers(0, n, (k, 64)), np.arange(64)]
    elif kind == "shuffled":
      x = rng.permuted(rows(k), axis=1)
    elif kind == "corrupted":
      x = rows(k).copy()
      hit = rng.random((k, 64)) < rng.uniform(0.3, 0.7, (k, 1))
      x[hit] = rng.integers(0, levels, hit.sum())
    else:
      x = _blur(rows(k), levels)
    out.append(np.asarray(x, np.int32))
  return np.concatenate(out)[rng.permutation(num)]


def classifier_accuracy(
  params: Params, images: np.ndarray, labels: np.ndarray, levels: int
) -> float:
  """Fraction of images [n, 64] whose predicted label equals labels [n]."""
  return float((classifier_predict(params, images, levels) == np.asarray(labels)).mean())


def train_digits_classifier(
  images: np.ndarray,
  labels: np.ndarray,
  levels: int,
  seed: int = 0,
  steps: int = 500,
  eval_images: Optional[np.ndarray] = None,
  eval_labels: Optional[np.ndarray] = None,
  hidden: Sequence[int] = (128, 64),
  learning_rate: float = 3e-3,
  weight_decay: float = 1e-4,
  reject_fraction: float = 2.0,
) -> tuple[Params, dict]:
  """Full-batch AdamW training of a `DigitsClassifier` with a reject class.

  The training set is the digits plus `reject_fraction * n` images of
  `reject_images` (label REJECT, drawn with `seed`).

  Args:
    images: int [n, 64] with values in [0, levels).
    labels: int [n] in [0, 10).
    levels: number of grey levels (17 for sklearn's digits).
    seed: PRNG seed for the initialisation and the reject images.
    steps: optimiser steps (each over the whole training set).
    eval_images, eval_labels: optional held-out set for `test_accuracy`
      and `test_recognised`.
    hidden: hidden widths; the last is the feature size.
    learning_rate, weight_decay: AdamW settings.
    reject_fraction: reject images per digit image; 0 trains a plain
      10-way classifier (no recognition).

  Returns:
    (params, meta) where meta is a JSON-ready dict with levels, seed, steps,
    train_accuracy (11-way argmax on the digits), reject_fraction, the
    recognised rate of fresh uniform noise (`noise_recognised`) and, given
    an eval set, test_accuracy and test_recognised.
  """
  labels = np.asarray(labels)
  if labels.shape != (np.shape(images)[0],):
    raise ValueError(f"labels must be [{np.shape(images)[0]}] to match images, got {labels.shape}")
  num_reject = int(round(reject_fraction * len(labels)))
  train_images, train_labels = np.asarray(images), labels
  if num_reject:
    train_images = np.concatenate([train_images, reject_images(images, levels, num_reject, seed)])
    train_labels = np.concatenate([labels, np.full(num_reject, REJECT, labels.dtype)])
  x = _scale_images(train_images, levels)
  y = jnp.asarray(train_labels, jnp.int32)
  model = DigitsClassifier(hidden=tuple(hidden), num_classes=NUM_DIGITS + (num_reject > 0))
  params = model.init(jax.random.PRNGKey(seed), x[:1])
  tx = optax.adamw(learning_rate, weight_decay=weight_decay)
  opt_state = tx.init(params)

  def loss_fn(p):
    logits = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  for _ in range(steps):
    params, opt_state, _ = step(params, opt_state)

  meta = {
    "levels": int(levels),
    "seed": int(seed),
    "steps": int(steps),
    "hidden": [int(h) for h in hidden],
    "train_accuracy": classifier_accuracy(params, images, labels, levels),
    "reject_fraction": float(reject_fraction),
  }
  if num_reject:
    # Fresh noise (another seed than the training rejects): the check the
    # reject class exists for.
    noise = np.random.default_rng([seed, 1]).integers(0, levels, (1000, 64))
    meta["noise_recognised"] = float(classifier_recognised(params, noise, levels).mean())
  if eval_images is not None:
    if eval_labels is None:
      raise ValueError("eval_images given without eval_labels")
    meta["test_accuracy"] = classifier_accuracy(params, eval_images, eval_labels, levels)
    if num_reject:
      meta["test_recognised"] = float(classifier_recognised(params, eval_images, levels).mean())
  return params, meta


def save_classifier(directory: str, params: Params, meta: dict) -> None:
  """Writes params (orbax) and meta (JSON) under `directory`."""
  _save(directory, params, meta)


def load_classifier(directory: str) -> tuple[Params, dict]:
  """Inverse of `save_classifier`: (params, meta)."""
  return _load(directory)


# ----------------------------------------------------------------------------
# Character-level language model.


class _Block(nn.Module):
  """Pre-LayerNorm transformer block with causal self-attention."""

  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
    h = nn.LayerNorm(name="ln_attn")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attn")(h, h, mask=mask)
    h = nn.LayerNorm(name="ln_mlp")(x)
    h = nn.Dense(self.mlp_ratio * d, name="mlp_in")(h)
    return x + nn.Dense(d, name="mlp_out")(nn.gelu(h))


class CharLM(nn.Module):
  """Small causal transformer; token `vocab_size` is BOS.

  Attributes:
    vocab_size: V (output classes); inputs range over V + 1 ids.
    max_len: longest input (BOS plus D - 1 tokens, so D for length-D data).
    width, num_layers, num_heads: transformer size.
  """

  vocab_size: int
  max_len: int
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Next-token logits [n, L, V] for inputs [n, L] (L <= max_len)."""
    length = inputs.shape[1]
    x = nn.Embed(self.vocab_size + 1, self.width, name="embed")(inputs)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.width))
    x = x + pos[None, :length]
    for i in range(self.num_layers):
      x = _Block(self.num_heads, name=f"block_{i}")(x)
    x = nn.LayerNorm(name="ln_final")(x)
    return nn.Dense(self.vocab_size, name="head")(x)


def _char_lm_config(params: Params) -> tuple[int, int, int, int, int]:
  p = params["params"]
  num_layers = sum(1 for k in p if k.startswith("block_"))
  # DenseGeneral query kernel is [width, heads, head_dim].
  num_heads = int(p["block_0"]["attn"]["query"]["kernel"].shape[1])
  max_len, width = (int(s) for s in p["pos_embed"].shape)
  vocab_size = int(p["head"]["kernel"].shape[1])
  return vocab_size, max_len, width, num_layers, num_heads


@functools.partial(jax.jit, static_argnums=0)
def _char_lm_apply(config: tuple, params: Params, inputs: jax.Array) -> jax.Array:
  vocab_size, max_len, width, num_layers, num_heads = config
  model = CharLM(vocab_size, max_len, width, num_layers, num_heads)
  return model.apply(params, inputs)


def _shift_right(tokens: jax.Array, bos: int) -> jax.Array:
  bos_col = jnp.full((tokens.shape[0], 1), bos, tokens.dtype)
  return jnp.concatenate([bos_col, tokens[:, :-1]], axis=1)


def char_lm_logits(params: Params, inputs: np.ndarray) -> np.ndarray:
  """Next-token logits [n, L, V] for raw model inputs [n, L] (BOS included)."""
  config = _char_lm_config(params)
  return np.asarray(_char_lm_apply(config, params, jnp.asarray(inputs, jnp.int32)))


def _check_tokens(tokens: np.ndarray, vocab_size: int, max_len: Optional[int] = None) -> jax.Array:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] == 0:
    raise ValueError(f"tokens must be [n, D] with D > 0, got {tokens.shape}")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(
      f"tokens must lie in [0, {vocab_size}), got range [{tokens.min()}, {tokens.max()}]"
    )
  if max_len is not None and tokens.shape[1] > max_len:
    raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's max_len {max_len}")
  return jnp.asarray(tokens, jnp.int32)


def log_likelihood(params: Params, tokens: np.ndarray) -> np.ndarray:
  """log p(x) in nats per sequence, x_1 predicted from BOS.

  Args:
    params: `CharLM` parameters.
    tokens: int [n, D], D <= max_len.

  Returns:
    float64 [n].
  """
  config = _char_lm_config(params)
  vocab_size, max_len = config[0], config[1]
  x = _check_tokens(tokens, vocab_size, max_len)
  logits = _char_lm_apply(config, params, _shift_right(x, vocab_size))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ll = jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0]
  return np.asarray(ll, np.float64).sum(-1)


def generative_perplexity(params: Params, tokens: np.ndarray) -> float:
  """exp(mean negative log-likelihood per token) of tokens [n, D]."""
  ll = log_likelihood(params, tokens)
  return float(np.exp(-ll.sum() / np.asarray(tokens).size))


def train_char_lm(
  tokens: np.ndarray,
  vocab_size: int,
  seed: int = 0,
  steps: int = 500,
  batch_size: int = 64,
  learning_rate: float = 3e-3,
  width: int = 64,
  num_layers: int = 2,
  num_heads: int = 4,
) -> Params:
  """Trains a `CharLM` by AdamW on random minibatches of tokens [n, D].

  Args:
    tokens: int [n, D] with values in [0, vocab_size).
    vocab_size: V.
    seed: seeds both the initialisation and the minibatch draws.
    steps: optimiser steps.
    batch_size: rows per step (capped at n).
    learning_rate: peak AdamW rate (cosine decay after a short warmup).
    width, num_layers, num_heads: model size.

  Returns:
    The trained params (max_len = D).
  """
  x_all = _check_tokens(tokens, vocab_size)
  n, d = x_all.shape
  batch_size = min(batch_size, n)
  model = CharLM(vocab_size, d, width, num_layers, num_heads)
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  params = model.init(init_key, x_all[:1])
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    learning_rate,
    warmup_steps=max(1, min(50, steps // 10)),
    decay_steps=max(steps, 2),
    end_value=0.1 * learning_rate,
  )
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
  opt_state = tx.init(params)

  def loss_fn(p, x):
    logits = model.apply(p, _shift_right(x, vocab_size))
    return optax.softmax_cross_entropy_with_integer_labels(logits, x).mean()

  @jax.jit
  def step(p, s, key):
    idx = jax.random.choice(key, n, (batch_size,), replace=False)
    loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx])
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  for key in jax.random.split(data_key, steps):
    params, opt_state, _ = step(params, opt_state, key)
  return params


def save_char_lm(directory: str, params: Params, meta: dict) -> None:
  """Writes params (orbax) and meta (JSON) under `directory`."""
  _save(directory, params, meta)


def load_char_lm(directory: str) -> tuple[Params, dict]:
  """Inverse of `save_char_lm`: (params, meta)."""
  return _load(directory)
