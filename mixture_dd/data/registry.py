"""Every data set, declared once.

A `DataSet` entry says everything the data code needs: its config fields
with their defaults, the `DataSpec` they give and how to open a split.
`pipeline.load` and `pipeline.default_data_config` read this registry.
How samples of a data set are scored is evaluation's business: its table
is `mixture_dd.scorers.SCORERS`, keyed by the same names.

To add a data set:

  1. write how its files come to exist: a builder in `builders.py` (data we
     generate or download ourselves) or nothing (a TFDS catalog name);
  2. add one `DataSet(...)` to `_ENTRIES` below (or call `register` from
     your own code), with `open=open_generated` (built on first use, held
     in memory), `open_own_download` / `open_tfds` (read by random access
     from array_record files, never whole);
  3. to evaluate runs on it, give it a scorer: `mixture_dd.scorers.register`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mixture_dd.data import builders, sources
from mixture_dd.data import text as text_lib

ORIGINS = ("generated", "tfds_catalog", "own_download")


@dataclasses.dataclass(frozen=True)
class DataSet:
  """One data set.

  Attributes:
    name: the value of config.data.name.
    origin: 'generated' (built offline on first use, held in memory),
      'tfds_catalog' (a TFDS catalog name, prepared by the user) or
      'own_download' (our builder, needs network once).
    defaults: every config field besides `name` and `data_dir`, with its
      default value.
    spec: (name, fields) -> DataSpec; must not read any data.
    open: (spec, data_dir, split, fields) -> ArraySource | RecordSource.
  """

  name: str
  origin: str
  defaults: Mapping[str, Any]
  spec: Callable[[str, Mapping[str, Any]], sources.DataSpec]
  open: Callable[..., Any]

  def __post_init__(self):
    if self.origin not in ORIGINS:
      raise ValueError(f"data set {self.name!r}: origin={self.origin!r}; choose one of {ORIGINS}.")
    if {"name", "data_dir"} & set(self.defaults):
      raise ValueError(
        f"data set {self.name!r}: 'name' and 'data_dir' are "
        "added to every config; leave them out of defaults."
      )
    # A read-only copy: entries are shared module state.
    object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))

  def make_spec(self, fields: Mapping[str, Any]) -> sources.DataSpec:
    return self.spec(self.name, fields)


_REGISTRY: dict[str, DataSet] = {}


def register(entry: DataSet) -> DataSet:
  """Adds `entry`; a name is registered once (no silent replacement)."""
  if entry.name in _REGISTRY:
    raise ValueError(
      f"data set {entry.name!r} is already registered; pick another name or call unregister first."
    )
  _REGISTRY[entry.name] = entry
  return entry


def unregister(name: str) -> None:
  """Removes a data set (for tests and notebooks that register their own)."""
  _REGISTRY.pop(name, None)


def get(name: str) -> DataSet:
  if name not in _REGISTRY:
    raise ValueError(f"unknown data set {name!r}; choose one of {names()}.")
  return _REGISTRY[name]


def names(origin: str | None = None) -> tuple[str, ...]:
  """Registered names in registration order, optionally of one origin."""
  return tuple(n for n, e in _REGISTRY.items() if origin is None or e.origin == origin)


# ------------------------------------------------------------ openers --


def check_split(name: str, split: str, splits) -> None:
  if split not in splits:
    raise ValueError(f"data set {name!r} has no split {split!r}; choose one of {sorted(splits)}.")


def read_all(data_source) -> list[dict]:
  """Every record of a TFDS data source, read in chunks."""
  records = []
  for start in range(0, len(data_source), sources.READ_CHUNK):
    stop = min(start + sources.READ_CHUNK, len(data_source))
    records.extend(sources.get_records(data_source, range(start, stop)))
  return records


def open_generated(
  spec: sources.DataSpec, data_dir: str, split: str, fields: Mapping[str, Any]
) -> sources.ArraySource:
  """Builds `builders.make_builder(spec.name)` once, then the whole split in
  memory (these splits are a few MB; batches are then pure array indexing)."""
  builder = builders.prepare(spec.name, data_dir, **fields)
  check_split(spec.name, split, builder.info.splits)
  records = read_all(builder.as_data_source(split))
  dtype = sources.token_dtype(spec.vocab_size)
  if not records:
    return sources.ArraySource(np.zeros((0, spec.length), dtype), np.zeros(0, np.int32))
  tokens = np.stack([np.asarray(r["tokens"]).reshape(-1) for r in records])
  labels = np.asarray([r["label"] for r in records], np.int32)
  return sources.ArraySource(tokens.astype(dtype), labels)


def open_own_download(
  spec: sources.DataSpec, data_dir: str, split: str, fields: Mapping[str, Any]
) -> sources.RecordSource:
  """Our builder's array_record files, which must already be prepared (this
  never downloads), read by random access."""
  builder = builders.make_builder(spec.name, data_dir, **fields)
  if not builder.is_prepared():
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
    raise ValueError(
      f"data set {spec.name!r} ({args}) is not prepared under "
      f"data_dir={data_dir!r} and this machine cannot download it. On a "
      'machine with network run `python -c "from mixture_dd.data import '
      f"builders; builders.prepare('{spec.name}', 'DIR', {args})\"`, copy "
      "DIR here and set config.data.data_dir=DIR."
    )
  check_split(spec.name, split, builder.info.splits)
  return sources.RecordSource(
    builder.as_data_source(split), spec.name, spec.length, sources.token_dtype(spec.vocab_size)
  )


def open_tfds(
  spec: sources.DataSpec,
  data_dir: str,
  split: str,
  fields: Mapping[str, Any],
  *,
  token_key: str = "tokens",
  label_key: str | None = "label",
) -> sources.RecordSource:
  """A TFDS catalog data set (prepared as array_record under data_dir, never
  downloaded here) read by random access; `split` may be a TFDS slice such
  as 'train[:10%]'."""
  del fields  # Catalog data sets have no parameters of ours.
  try:
    data_source = tfds.data_source(spec.name, split=split, data_dir=data_dir, download=False)
  except (
    NotImplementedError,
    FileNotFoundError,
    AssertionError,
    tfds.core.registered.DatasetNotFoundError,
  ) as e:
    raise ValueError(
      f"data set {spec.name!r} is not prepared under data_dir={data_dir!r} "
      f"({type(e).__name__}). This machine cannot download it: on a "
      f"machine with network run `tfds build {spec.name} --data_dir DIR "
      "--file_format=array_record` (random access needs array_record, not "
      "the default tfrecord), copy DIR here and set "
      "config.data.data_dir=DIR."
    ) from e
  return sources.RecordSource(
    data_source,
    spec.name,
    spec.length,
    sources.token_dtype(spec.vocab_size),
    token_key=token_key,
    label_key=label_key,
  )


open_tfds_images = functools.partial(open_tfds, token_key="image", label_key="label")


# -------------------------------------------------------------- specs --


def tokens_spec(name: str, f: Mapping[str, Any]) -> sources.DataSpec:
  """Unlabelled token sequences with `vocab_size` and `length` fields."""
  return sources.DataSpec(name, f["vocab_size"], f["length"], 0, None, "tokens")


def image_spec(shape: tuple[int, ...], levels: int = 256, num_classes: int = 10) -> Callable:
  """Labelled images of a fixed shape, flattened to D = prod(shape)."""
  length = 1
  for s in shape:
    length *= s
  return lambda name, f: sources.DataSpec(name, levels, length, num_classes, tuple(shape), "image")


def text_spec(alphabet: str) -> Callable:
  """Character windows with a `length` field; token i is alphabet[i]."""
  return lambda name, f: sources.DataSpec(
    name, len(alphabet), f["length"], 0, None, "text", alphabet
  )


def _digits_spec(name: str, f: Mapping[str, Any]) -> sources.DataSpec:
  return sources.DataSpec(name, f["levels"], 64, 10, (8, 8), "image")


# ------------------------------------------------------------ entries --

_ENTRIES = (
  DataSet(
    "markov",
    "generated",
    dict(vocab_size=8, length=32, seed=0, num_train=20000, num_test=2000),
    spec=tokens_spec,
    open=open_generated,
  ),
  DataSet(
    "tiny",
    "generated",
    dict(family="noisy_copies", vocab_size=3, length=3, seed=0, num_train=20000, num_test=2000),
    spec=tokens_spec,
    open=open_generated,
  ),
  DataSet(
    "digits",
    "generated",
    dict(levels=17),
    spec=_digits_spec,
    open=open_generated,
  ),
  DataSet(
    "pydoc_text",
    "generated",
    dict(length=64),
    spec=text_spec(text_lib.PYDOC_ALPHABET),
    open=open_generated,
  ),
  DataSet("mnist", "tfds_catalog", {}, spec=image_spec((28, 28, 1)), open=open_tfds_images),
  DataSet("cifar10", "tfds_catalog", {}, spec=image_spec((32, 32, 3)), open=open_tfds_images),
  DataSet(
    "text8",
    "own_download",
    dict(length=256),
    spec=text_spec(text_lib.TEXT8_ALPHABET),
    open=open_own_download,
  ),
)
for _entry in _ENTRIES:
  register(_entry)
del _entry
