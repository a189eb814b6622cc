"""The data entry point of the training code: `load` and `make_batcher`.

  spec, source = load(config.data, "train")
  process.check_tokens(source.head(1000).tokens, "data")
  batcher = make_batcher(source, global_batch_size=256, seed=0,
                         process_index=jax.process_index(),
                         process_count=jax.process_count(),
                         vocab_size=spec.vocab_size)
  batch = batcher.batch(step)  # {"tokens": [B, D], "labels": [B]} int32

`load` returns an `ArraySource` (the whole split in memory) for the data
sets we generate, and a `RecordSource` (random access to array_record
files, nothing read up front) for the catalog ones, which need not fit in
memory. Either way `batcher.batch(step)` is a pure function of (seed, step,
process_index, process_count), so a resumed run sees exactly the batches of
an uninterrupted one. The data sets themselves are declared in `registry`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os

import ml_collections
import numpy as np

from mixture_dd.data import builders, registry, sources
from mixture_dd.data import text as text_lib

# Re-exported: the rest of the code reads them from here.
DataSpec = sources.DataSpec
ArraySource = sources.ArraySource
RecordSource = sources.RecordSource

# Names at import time, by origin (data sets registered later are still
# accepted by `load`; these tuples are for listing).
GENERATED = registry.names("generated")
TFDS_CATALOG = registry.names("tfds_catalog")
OWN_DOWNLOAD = registry.names("own_download")
NAMES = registry.names()


# A token array held in memory (`distill.distill_student(..., tokens=...)`):
# not a registry entry, since nothing builds or reads its files; its config
# records the spec (filled from the array by `array_source`), so that a run of
# it loads and samples without the array. checksum: of the tokens and labels
# (informational: a resume with other tokens shows up as a changed config
# field in config_history.jsonl).
ARRAY = "array"
ARRAY_FIELDS = ("vocab_size", "length", "num_classes", "checksum")


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """Every field data set `name` accepts, with its default value."""
  if name == ARRAY:
    ph = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(
      dict(
        name=ARRAY,
        data_dir=ph(str),
        vocab_size=ph(int),
        length=ph(int),
        num_classes=ph(int),
        checksum=ph(str),
      )
    )
  entry = registry.get(name)
  # A typed None: `--config.data.data_dir=DIR` can set it from the command line.
  return ml_collections.ConfigDict(
    dict(name=name, data_dir=ml_collections.config_dict.placeholder(str), **entry.defaults)
  )


def decode_text(spec: DataSpec, tokens: np.ndarray) -> str | list[str]:
  """Tokens [D] -> str, or [B, D] -> list of B strings, for text specs."""
  if spec.alphabet is None:
    raise ValueError(
      f"data set {spec.name!r} is {spec.kind!r}, not text; "
      "only text specs (pydoc_text, text8) can be decoded."
    )
  tokens = np.asarray(tokens)
  if tokens.ndim == 2:
    return [text_lib.decode(t, spec.alphabet) for t in tokens]
  return text_lib.decode(tokens, spec.alphabet)


def _check_fields(data_config) -> tuple[registry.DataSet, str | None, dict]:
  """(registry entry, data_dir, data set fields) after checking them."""
  cfg = dict(data_config)  # ConfigDict and plain dicts alike.
  name = cfg.pop("name", None)
  if name not in registry.names():
    raise ValueError(
      f"data.name={name!r} is not a known data set; choose one of {registry.names()}."
    )
  entry = registry.get(name)
  if "data_dir" not in cfg:
    raise ValueError(
      "data.data_dir is missing; set it to a directory or "
      "None for the default ~/.cache/mixture_dd/tfds."
    )
  data_dir = cfg.pop("data_dir")
  accepted = sorted(entry.defaults)
  unknown = sorted(set(cfg) - set(accepted))
  missing = sorted(set(accepted) - set(cfg))
  if unknown or missing:
    raise ValueError(
      f"data set {name!r}: unknown field(s) {unknown}, missing field(s) "
      f"{missing}; accepted fields are {accepted} (start from "
      f"default_data_config({name!r}))."
    )
  return entry, data_dir, cfg


def data_spec(data_config) -> DataSpec:
  """The spec `load` would return, without building or reading any data."""
  if dict(data_config).get("name") == ARRAY:
    return _array_spec(data_config)
  entry, _, fields = _check_fields(data_config)
  return entry.make_spec(fields)


def _array_fields(data_config) -> dict:
  cfg = {k: v for k, v in dict(data_config).items() if k not in ("name", "data_dir")}
  unknown = sorted(set(cfg) - set(ARRAY_FIELDS))
  if unknown:
    raise ValueError(
      f"data set {ARRAY!r} (a token array): unknown field(s) {unknown}; accepted fields are "
      f"{sorted(ARRAY_FIELDS)} (start from default_data_config({ARRAY!r}))."
    )
  return {k: cfg.get(k) for k in ARRAY_FIELDS}


def _array_spec(data_config) -> DataSpec:
  f = _array_fields(data_config)
  for k in ("vocab_size", "length"):
    if not isinstance(f[k], (int, np.integer)) or f[k] < 1:
      raise ValueError(
        f"config.data.{k}={f[k]!r}: a token array's config needs positive vocab_size and "
        "length; `array_source` fills them from the tokens (pass tokens=[N, D] to "
        "distill.distill_student / setup_student / quick_distill)."
      )
  return DataSpec(
    ARRAY, int(f["vocab_size"]), int(f["length"]), int(f["num_classes"] or 0), None, "tokens"
  )


def array_source(
  data_config, tokens, labels=None
) -> tuple[ml_collections.ConfigDict, DataSpec, ArraySource]:
  """(data config, spec, source) of a token array tokens `[N, D]` (labels `[N]`).

  The config's unset fields come from the array: length = D, vocab_size =
  the largest token + 1 (set it when the tokens do not use the top values),
  num_classes = the largest label + 1 (0 without labels); set fields are
  checked against it. `data_config` is a `default_data_config(ARRAY)`-style
  section (a bare {"name": ARRAY} will do).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
    raise ValueError(
      f"tokens must be a non-empty [num_examples, length] array, got {tokens.shape}."
    )
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}.")
  if tokens.min() < 0:
    raise ValueError(f"tokens must be >= 0 (values of the vocabulary), got min {tokens.min()}.")
  n, length = tokens.shape
  given = labels is not None
  labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise ValueError(
      f"labels must be integers >= 0 of shape [{n}] (one per row of tokens), got shape "
      f"{labels.shape}, dtype {labels.dtype}."
    )
  f = _array_fields(data_config)
  seen = {
    "length": (length, "the tokens' length D"),
    "vocab_size": (int(tokens.max()) + 1, "the largest token + 1"),
    "num_classes": (int(labels.max()) + 1 if given else 0, "the largest label + 1"),
  }
  for k, (value, what) in seen.items():
    if f[k] is None:
      f[k] = value
    elif k == "length" and f[k] != value:
      raise ValueError(f"config.data.length={f[k]} differs from {what}, {value}: unset it.")
    elif k != "length" and f[k] < value:
      raise ValueError(
        f"config.data.{k}={f[k]} is below {what}, {value}: raise it to {value} or unset it."
      )
  digest = hashlib.sha256()
  for a in (tokens, labels):
    a = np.ascontiguousarray(a)
    digest.update(f"{a.dtype.str}{a.shape}".encode())
    digest.update(a.data)
  f["checksum"] = digest.hexdigest()[:16]
  cfg = default_data_config(ARRAY)
  cfg.data_dir = dict(data_config).get("data_dir")
  cfg.update(f)
  return cfg, _array_spec(cfg), ArraySource(tokens, labels)


def load(data_config, split: str) -> tuple[DataSpec, ArraySource | RecordSource]:
  """(spec, source of `split`) for a `default_data_config`-style config.

  Generated data sets are built under data_dir on first use (seconds), read
  back from the cache afterwards, and returned whole in memory
  (`ArraySource`). Catalog data sets are opened for random access
  (`RecordSource`): nothing is read until a batch asks for it. A token
  array (name ARRAY) is the caller's: see `array_source`.
  """
  if dict(data_config).get("name") == ARRAY:
    raise ValueError(
      f"config.data.name={ARRAY!r} is a token array held in memory, not a data set on disk: "
      "pass the array itself, distill.distill_student(config, workdir, teacher=..., "
      "tokens=[N, D]) (or setup_student / quick_distill), or pipeline.array_source."
    )
  entry, data_dir, fields = _check_fields(data_config)
  data_dir = os.path.expanduser(data_dir or builders.DEFAULT_DATA_DIR)
  spec = entry.make_spec(fields)
  return spec, entry.open(spec, data_dir, split, fields)


class _IndexedBatches:
  """Which examples make up the batch at each step: shared by both batchers.

  The batch at `step` depends only on (seed, step): epoch e = step //
  steps_per_epoch uses permutation e of the data (seeded by (seed, e)) and
  drops the remainder of each epoch, so a run resumed at step k sees exactly
  the batches of an uninterrupted run. Process p takes the contiguous slice
  [p * local, (p + 1) * local) of the global batch, so the processes together
  cover the global batch exactly once. The permutation costs 8 bytes per
  example of host memory (240 MB at 30M examples), the data itself nothing.
  """

  def __init__(
    self,
    num_examples: int,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(
        f"need 0 <= process_index < process_count, got "
        f"process_index={process_index}, "
        f"process_count={process_count}."
      )
    if global_batch_size < 1 or global_batch_size % process_count:
      raise ValueError(
        f"global_batch_size={global_batch_size} must be a "
        f"positive multiple of process_count={process_count}."
      )
    if global_batch_size > num_examples:
      raise ValueError(
        f"global_batch_size={global_batch_size} exceeds the "
        f"{num_examples} examples; lower the batch size."
      )
    self.num_examples = num_examples
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.steps_per_epoch = num_examples // global_batch_size
    self._perm_cache = (None, None)  # (epoch, permutation): a pure cache.

  def _permutation(self, epoch: int) -> np.ndarray:
    # One read of the cache: a prefetch thread may replace it meanwhile.
    cached_epoch, perm = self._perm_cache
    if cached_epoch != epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      self._perm_cache = (epoch, perm)
    return perm

  def global_indices(self, step: int) -> np.ndarray:
    """Example indices [global_batch] of the global batch at `step`."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    epoch, within = divmod(step, self.steps_per_epoch)
    start = within * self.global_batch_size
    return self._permutation(epoch)[start : start + self.global_batch_size]

  def local_indices(self, step: int) -> np.ndarray:
    """This process's slice [local_batch] of `global_indices(step)`."""
    start = self.process_index * self.local_batch_size
    return self.global_indices(step)[start : start + self.local_batch_size]


class Batcher(_IndexedBatches):
  """Deterministic global batches of in-memory arrays, sliced per process.

  See `_IndexedBatches` for which examples the batch at a step holds. The
  whole array is checked once here (dtype, vocabulary, labels).
  """

  def __init__(
    self,
    tokens: np.ndarray,
    labels: np.ndarray | None,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    vocab_size: int | None = None,
  ):
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be [num_examples, length], got shape {tokens.shape}.")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}.")
    if len(tokens) == 0:
      raise ValueError("the data set is empty: nothing to batch.")
    if vocab_size is not None and (tokens.min() < 0 or tokens.max() >= vocab_size):
      raise ValueError(
        f"tokens lie in [{tokens.min()}, {tokens.max()}], outside the vocabulary [0, {vocab_size})."
      )
    labels = np.zeros(len(tokens), np.int32) if labels is None else np.asarray(labels)
    if labels.shape != (len(tokens),):
      raise ValueError(f"labels must be [{len(tokens)}], got shape {labels.shape}.")
    super().__init__(len(tokens), global_batch_size, seed, process_index, process_count)
    self.tokens = tokens
    self.labels = labels

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """{"tokens": [local_batch, D] int32, "labels": [local_batch] int32}."""
    idx = self.local_indices(step)
    return {
      "tokens": self.tokens[idx].astype(np.int32),
      "labels": self.labels[idx].astype(np.int32),
    }


class SourceBatcher(_IndexedBatches):
  """The batches of `Batcher`, read by random access from a source.

  Each process reads only the records of its own slice of each global batch
  (`source.read(local_indices(step))`), so no process ever holds the split.
  Over the same examples it gives exactly `Batcher`'s batches. Tokens are
  checked against the vocabulary batch by batch, since the split is never
  seen whole. With `prefetch` > 0 one background thread reads the next
  `prefetch` steps while the caller trains on this one; as `batch(step)` is
  a pure function of step, this changes only when records are read, never
  what a batch holds. All reads happen on that one thread.
  """

  def __init__(
    self,
    source,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    vocab_size: int | None = None,
    prefetch: int = 0,
  ):
    if len(source) == 0:
      raise ValueError("the data set is empty: nothing to batch.")
    if prefetch < 0:
      raise ValueError(f"prefetch must be >= 0 steps, got {prefetch}.")
    super().__init__(len(source), global_batch_size, seed, process_index, process_count)
    self.source = source
    self.vocab_size = vocab_size
    self.prefetch = prefetch
    self._pool = (
      concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mixture_dd_prefetch")
      if prefetch
      else None
    )
    self._pending: dict[int, concurrent.futures.Future] = {}

  def _read(self, step: int) -> dict[str, np.ndarray]:
    rows = self.source.read(self.local_indices(step))
    tokens = np.asarray(rows.tokens)
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}.")
    if self.vocab_size is not None and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
      raise ValueError(
        f"step {step}: tokens lie in [{tokens.min()}, {tokens.max()}], "
        f"outside the vocabulary [0, {self.vocab_size}); the files do not "
        "match the data set's spec (its registry entry)."
      )
    return {"tokens": tokens.astype(np.int32), "labels": np.asarray(rows.labels).astype(np.int32)}

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """{"tokens": [local_batch, D] int32, "labels": [local_batch] int32}."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    if self._pool is None:
      return self._read(step)
    future = self._pending.pop(step, None)
    if future is None:
      future = self._pool.submit(self._read, step)
    # Read-aheads the caller jumped over (e.g. a restart) are dropped.
    for s in [s for s in self._pending if not step < s <= step + self.prefetch]:
      self._pending.pop(s).cancel()
    for s in range(step + 1, step + 1 + self.prefetch):
      if s not in self._pending:
        self._pending[s] = self._pool.submit(self._read, s)
    return future.result()

  def close(self) -> None:
    """Stops the prefetch thread (pending read-aheads are dropped)."""
    if self._pool is not None:
      for future in self._pending.values():
        future.cancel()
      self._pending.clear()
      self._pool.shutdown(wait=True)
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def make_batcher(
  source,
  global_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  vocab_size: int | None = None,
  prefetch: int = 2,
) -> Batcher | SourceBatcher:
  """This process's batcher over either kind of source `load` returns.

  An `ArraySource` gets the in-memory `Batcher` (as before: the same batches
  for the same seed); a `RecordSource` (or anything with `__len__` and
  `read(indices)`) gets a `SourceBatcher` that reads only this process's
  records of each step, `prefetch` steps ahead. Both give
  {"tokens": [global_batch_size / process_count, D] int32,
   "labels": [global_batch_size / process_count] int32} from `batch(step)`.
  """
  if isinstance(source, ArraySource):
    return Batcher(
      source.tokens,
      source.labels,
      global_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      vocab_size=vocab_size,
    )
  if not (hasattr(source, "read") and hasattr(source, "__len__")):
    raise TypeError(
      f"make_batcher needs an ArraySource or a source with "
      f"__len__ and read(indices), got {type(source).__name__}; "
      "use pipeline.load or wrap arrays in pipeline.ArraySource."
    )
  return SourceBatcher(
    source,
    global_batch_size,
    seed,
    process_index=process_index,
    process_count=process_count,
    vocab_size=vocab_size,
    prefetch=prefetch,
  )
