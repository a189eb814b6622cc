"""The data entry point of the training code: `load` and `Batcher`.

  spec, source = load(config.data, "train")
  batcher = Batcher(source.tokens, source.labels, global_batch_size=256,
                    seed=0, process_index=jax.process_index(),
                    process_count=jax.process_count(),
                    vocab_size=spec.vocab_size)
  batch = batcher.batch(step)  # {"tokens": [B, D], "labels": [B]} int32

Every split used here is small enough to hold in host memory, so `load`
reads it once into numpy; `Batcher` is then a pure function of (seed, step).
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mixture_dd.data import builders
from mixture_dd.data import text as text_lib

GENERATED = ("markov", "tiny", "digits", "pydoc_text")
TFDS_CATALOG = ("mnist", "cifar10")
OWN_DOWNLOAD = ("text8",)
NAMES = GENERATED + TFDS_CATALOG + OWN_DOWNLOAD

# Fields of each data set besides `name` and `data_dir`.
_DEFAULTS = {
    "markov": dict(vocab_size=8, length=32, seed=0, num_train=20000,
                   num_test=2000),
    "tiny": dict(family="noisy_copies", vocab_size=3, length=3, seed=0,
                 num_train=20000, num_test=2000),
    "digits": dict(levels=17),
    "pydoc_text": dict(length=64),
    "mnist": dict(),
    "cifar10": dict(),
    "text8": dict(length=256),
}
_IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know about a data set.

  Attributes:
    name: data set name.
    vocab_size: tokens are in [0, vocab_size).
    length: sequence length D.
    num_classes: number of labels; 0 means unlabelled (labels are all 0).
    image_shape: shape to reshape a [D] sequence to for display, or None.
    kind: 'image' | 'text' | 'tokens'.
    alphabet: for text, the string whose i-th character is token i.
  """
  name: str
  vocab_size: int
  length: int
  num_classes: int
  image_shape: tuple[int, ...] | None
  kind: str
  alphabet: str | None = None


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A whole split in memory: tokens [N, D], labels [N] (random access)."""
  tokens: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.tokens)

  def __getitem__(self, i):
    return {"tokens": self.tokens[i], "labels": self.labels[i]}


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """Every field data set `name` accepts, with its default value."""
  if name not in NAMES:
    raise ValueError(f"unknown data set {name!r}; choose one of {NAMES}.")
  return ml_collections.ConfigDict(
      dict(name=name, data_dir=None, **_DEFAULTS[name]))


def decode_text(spec: DataSpec, tokens: np.ndarray) -> str | list[str]:
  """Tokens [D] -> str, or [B, D] -> list of B strings, for text specs."""
  if spec.alphabet is None:
    raise ValueError(f"data set {spec.name!r} is {spec.kind!r}, not text; "
                     "only text specs (pydoc_text, text8) can be decoded.")
  tokens = np.asarray(tokens)
  if tokens.ndim == 2:
    return [text_lib.decode(t, spec.alphabet) for t in tokens]
  return text_lib.decode(tokens, spec.alphabet)


def _check_fields(data_config) -> tuple[str, str | None, dict]:
  """(name, data_dir, dataset fields) after checking names and fields."""
  cfg = dict(data_config)  # ConfigDict and plain dicts alike.
  name = cfg.pop("name", None)
  if name not in NAMES:
    raise ValueError(f"data.name={name!r} is not a known data set; choose one "
                     f"of {NAMES}.")
  if "data_dir" not in cfg:
    raise ValueError("data.data_dir is missing; set it to a directory or "
                     "None for the default ~/.cache/mixture_dd/tfds.")
  data_dir = cfg.pop("data_dir")
  accepted = sorted(_DEFAULTS[name])
  unknown = sorted(set(cfg) - set(accepted))
  missing = sorted(set(accepted) - set(cfg))
  if unknown or missing:
    raise ValueError(
        f"data set {name!r}: unknown field(s) {unknown}, missing field(s) "
        f"{missing}; accepted fields are {accepted} (start from "
        f"default_data_config({name!r})).")
  return name, data_dir, cfg


def _read_all(data_source) -> list[dict]:
  """Every record of a TFDS data source, read in chunks (4x faster)."""
  records = []
  for start in range(0, len(data_source), _READ_CHUNK):
    keys = list(range(start, min(start + _READ_CHUNK, len(data_source))))
    try:
      records.extend(data_source.__getitems__(keys))
    except TypeError:
      # `tfds.testing.mock_data` sources break in `__getitems__`.
      records.extend(data_source[k] for k in keys)
  return records


def _to_arrays(records: list[dict], key: str, label_key: str, length: int,
               dtype) -> ArraySource:
  if not records:
    return ArraySource(np.zeros((0, length), dtype), np.zeros(0, np.int32))
  tokens = np.stack([np.asarray(r[key]).reshape(-1) for r in records])
  labels = np.asarray([r[label_key] for r in records], np.int32)
  return ArraySource(tokens.astype(dtype), labels)


def _catalog_error(name: str, data_dir: str, cause: Exception) -> ValueError:
  return ValueError(
      f"data set {name!r} is not prepared under data_dir={data_dir!r} "
      f"({type(cause).__name__}). This machine cannot download it: on a "
      f"machine with network run `tfds build {name} --data_dir DIR "
      "--file_format=array_record` (random access needs array_record, not "
      "the default tfrecord), copy DIR here and set "
      "config.data.data_dir=DIR.")


def _check_split(name: str, split: str, splits) -> None:
  if split not in splits:
    raise ValueError(f"data set {name!r} has no split {split!r}; choose one "
                     f"of {sorted(splits)}.")


def load(data_config, split: str) -> tuple[DataSpec, ArraySource]:
  """(spec, whole split in memory) for a `default_data_config`-style config.

  Generated data sets are built under data_dir on first use (seconds) and
  read back from the cache afterwards.
  """
  name, data_dir, fields = _check_fields(data_config)
  data_dir = os.path.expanduser(data_dir or builders.DEFAULT_DATA_DIR)

  if name in TFDS_CATALOG:
    try:
      data_source = tfds.data_source(name, split=split, data_dir=data_dir,
                                     download=False)
    except (NotImplementedError, FileNotFoundError, AssertionError,
            tfds.core.registered.DatasetNotFoundError) as e:
      raise _catalog_error(name, data_dir, e) from e
    shape = _IMAGE_SHAPES[name]
    spec = DataSpec(name, 256, int(np.prod(shape)), 10, shape, "image")
    source = _to_arrays(_read_all(data_source), "image", "label", spec.length,
                        np.uint8)
    return spec, source

  if name in OWN_DOWNLOAD:
    builder = builders.make_builder(name, data_dir, **fields)
    if not builder.is_prepared():
      raise ValueError(
          f"data set {name!r} (length={fields['length']}) is not prepared "
          f"under data_dir={data_dir!r} and this machine cannot download it. "
          "On a machine with network run `python -c \"from mixture_dd.data "
          f"import builders; builders.prepare('{name}', 'DIR', "
          f"length={fields['length']})\"`, copy DIR here and set "
          "config.data.data_dir=DIR.")
  else:
    builder = builders.prepare(name, data_dir, **fields)
  _check_split(name, split, builder.info.splits)
  records = _read_all(builder.as_data_source(split))

  if name == "markov":
    spec = DataSpec(name, fields["vocab_size"], fields["length"], 0, None,
                    "tokens")
  elif name == "tiny":
    spec = DataSpec(name, fields["vocab_size"], fields["length"], 0, None,
                    "tokens")
  elif name == "digits":
    spec = DataSpec(name, fields["levels"], 64, 10, (8, 8), "image")
  elif name == "pydoc_text":
    spec = DataSpec(name, len(text_lib.PYDOC_ALPHABET), fields["length"], 0,
                    None, "text", text_lib.PYDOC_ALPHABET)
  else:  # text8
    spec = DataSpec(name, len(text_lib.TEXT8_ALPHABET), fields["length"], 0,
                    None, "text", text_lib.TEXT8_ALPHABET)
  dtype = np.uint8 if spec.vocab_size <= 256 else np.int32
  return spec, _to_arrays(records, "tokens", "label", spec.length, dtype)


class Batcher:
  """Deterministic global batches, sliced per process.

  The batch at `step` depends only on (seed, step): epoch e = step //
  steps_per_epoch uses permutation e of the data (seeded by (seed, e)) and
  drops the remainder of each epoch, so a run resumed at step k sees exactly
  the batches of an uninterrupted run. Process p takes the contiguous slice
  [p * local, (p + 1) * local) of the global batch, so the processes together
  cover the global batch exactly once.
  """

  def __init__(self, tokens: np.ndarray, labels: np.ndarray | None,
               global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1, vocab_size: int | None = None):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [num_examples, length], got shape "
                       f"{tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}.")
    if len(tokens) == 0:
      raise ValueError("the data set is empty: nothing to batch.")
    if vocab_size is not None and (tokens.min() < 0 or
                                   tokens.max() >= vocab_size):
      raise ValueError(f"tokens lie in [{tokens.min()}, {tokens.max()}], "
                       f"outside the vocabulary [0, {vocab_size}).")
    labels = (np.zeros(len(tokens), np.int32) if labels is None
              else np.asarray(labels))
    if labels.shape != (len(tokens),):
      raise ValueError(f"labels must be [{len(tokens)}], got shape "
                       f"{labels.shape}.")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f"need 0 <= process_index < process_count, got "
                       f"process_index={process_index}, "
                       f"process_count={process_count}.")
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(f"global_batch_size={global_batch_size} must be a "
                       f"positive multiple of process_count={process_count}.")
    if global_batch_size > len(tokens):
      raise ValueError(f"global_batch_size={global_batch_size} exceeds the "
                       f"{len(tokens)} examples; lower the batch size.")
    self.tokens = tokens
    self.labels = labels
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.steps_per_epoch = len(tokens) // global_batch_size
    self._perm_cache = (None, None)  # (epoch, permutation): a pure cache.

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._perm_cache[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm_cache = (epoch, rng.permutation(len(self.tokens)))
    return self._perm_cache[1]

  def global_indices(self, step: int) -> np.ndarray:
    """Example indices [global_batch] of the global batch at `step`."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    epoch, within = divmod(step, self.steps_per_epoch)
    start = within * self.global_batch_size
    return self._permutation(epoch)[start:start + self.global_batch_size]

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """{"tokens": [local_batch, D] int32, "labels": [local_batch] int32}."""
    start = self.process_index * self.local_batch_size
    idx = self.global_indices(step)[start:start + self.local_batch_size]
    return {"tokens": self.tokens[idx].astype(np.int32),
            "labels": self.labels[idx].astype(np.int32)}
