"""What `pipeline.load` returns: a `DataSpec` and a random-access source.

Two kinds of source, with one reading interface (`len`, `read`, `head`):

  * `ArraySource`: the whole split in host memory (the generated data sets,
    a few MB each); `source.tokens` [N, D] and `source.labels` [N].
  * `RecordSource`: a split read record by record from TFDS array_record
    files (`tfds.data_source`); nothing is read until asked for, so a split
    larger than memory costs nothing to open. It has no `tokens` array:
    read slices with `read(indices)` / `head(n)`, or batch it with
    `pipeline.make_batcher`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

# Records per `__getitems__` call: batched reads are about 4x faster than
# one call per record.
READ_CHUNK = 4096


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


def token_dtype(vocab_size: int):
  """uint8 when it holds the vocabulary (4x less memory), else int32."""
  return np.uint8 if vocab_size <= 256 else np.int32


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A whole split in memory: tokens [N, D], labels [N] (random access)."""

  tokens: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.tokens)

  def __getitem__(self, i):
    return {"tokens": self.tokens[i], "labels": self.labels[i]}

  def read(self, indices) -> ArraySource:
    """The rows `indices` [n]: tokens [n, D], labels [n], stored dtypes."""
    indices = np.asarray(indices, np.int64)
    return ArraySource(self.tokens[indices], self.labels[indices])

  def head(self, n: int) -> ArraySource:
    """The first min(n, len) examples."""
    return ArraySource(self.tokens[:n], self.labels[:n])


def get_records(data_source, keys: Sequence[int]) -> list[dict]:
  """Records `keys` of a TFDS data source, in one batched read if it can."""
  keys = [int(k) for k in keys]
  try:
    return list(data_source.__getitems__(keys))
  except TypeError:
    # `tfds.testing.mock_data` sources break in `__getitems__` (their mock
    # is a partial without `self`); one read per record still works.
    return [data_source[k] for k in keys]


class RecordSource:
  """A split read by random access from a TFDS data source; nothing cached.

  Each record is a dict with `token_key` (any shape, flattened to [D]) and
  optionally `label_key` (a scalar). `read(indices)` returns an
  `ArraySource` of just those rows, so a process that reads its own slice
  of each batch touches only those records on disk.
  """

  def __init__(
    self,
    data_source,
    name: str,
    length: int,
    dtype,
    token_key: str = "tokens",
    label_key: str | None = "label",
  ):
    self.data_source = data_source
    self.name = name
    self.length = length
    self.dtype = np.dtype(dtype)
    self.token_key = token_key
    self.label_key = label_key

  def __len__(self) -> int:
    return len(self.data_source)

  def __repr__(self) -> str:
    return (
      f"RecordSource({self.name!r}, {len(self)} records of length {self.length}, read on demand)"
    )

  @property
  def tokens(self):
    raise AttributeError(
      f"{self!r} does not hold the split in memory, so it has no `tokens` "
      "array: read rows with `source.read(indices)` or `source.head(n)`, "
      "batch it with `pipeline.make_batcher(source, ...)`, or (only if the "
      "split fits in memory) call `source.to_arrays()`."
    )

  labels = tokens

  def read(self, indices) -> ArraySource:
    """The rows `indices` [n]: tokens [n, D] (self.dtype), labels [n] int32."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    n = len(self)
    if indices.size and (indices.min() < 0 or indices.max() >= n):
      raise IndexError(
        f"{self.name}: indices in [{indices.min()}, {indices.max()}] outside the {n} records."
      )
    tokens = np.zeros((len(indices), self.length), self.dtype)
    labels = np.zeros(len(indices), np.int32)
    for start in range(0, len(indices), READ_CHUNK):
      keys = indices[start : start + READ_CHUNK]
      for j, record in enumerate(get_records(self.data_source, keys)):
        row = np.asarray(record[self.token_key]).reshape(-1)
        if row.shape != (self.length,):
          raise ValueError(
            f"{self.name}: record {keys[j]} has {row.size} tokens, the spec "
            f"says length {self.length}; the registry entry's spec does not "
            "match the files."
          )
        tokens[start + j] = row
        if self.label_key is not None:
          labels[start + j] = record[self.label_key]
    return ArraySource(tokens, labels)

  def __getitem__(self, i: int) -> dict[str, Any]:
    row = self.read([i])
    return {"tokens": row.tokens[0], "labels": row.labels[0]}

  def head(self, n: int) -> ArraySource:
    """The first min(n, len) examples, without reading the rest."""
    return self.read(np.arange(min(n, len(self))))

  def to_arrays(self) -> ArraySource:
    """The whole split in memory: only for splits that fit."""
    return self.read(np.arange(len(self)))
