"""TFDS builders for the data sets this project generates offline.

Every builder writes `array_record` files (no TensorFlow needed) with
features `tokens` int32 [D] and `label` int32 [], splits `train` / `test`.
Parameters live in a BuilderConfig whose name encodes them, so each
parameter setting is cached in its own directory under `data_dir` and a
second run reads it back instead of rebuilding.

Use `make_builder(name, data_dir, **params)`; the classes are not put in the
global TFDS registry (so importing this module never clashes with catalog
names) and are meant to be constructed through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mixture_dd import exact
from mixture_dd.data import markov
from mixture_dd.data import text as text_lib

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "mixture_dd", "tfds")
_VERSION = tfds.core.Version("1.0.0")
_RELEASE_NOTES = {"1.0.0": "Initial release."}
# Split seeds are fixed (not configurable) so a data set's test set never
# moves between experiments.
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.1
_PYDOC_TEST_EVERY = 10


def _features(length: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      "tokens": tfds.features.Tensor(shape=(length,), dtype=np.int32),
      "label": tfds.features.Scalar(dtype=np.int32),
    }
  )


def _examples(tokens: np.ndarray, labels: np.ndarray | None = None):
  """Yields (key, example) from tokens [N, D] and labels [N] (or zeros)."""
  if labels is None:
    labels = np.zeros(len(tokens), np.int32)
  for i, (t, y) in enumerate(zip(tokens, labels)):
    yield i, {"tokens": np.asarray(t, np.int32), "label": np.int32(y)}


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: a version and an empty download step."""

  VERSION = _VERSION
  RELEASE_NOTES = _RELEASE_NOTES
  # TFDS otherwise locates the module through `importlib_resources`, which
  # is not installed without TensorFlow's extras and fails on import.
  code_path = epath.Path(__file__)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is generated or ships with Python/sklearn.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  # One log line of ours instead of TFDS's "Downloading and preparing dataset
  # Unknown size ..." banner (the generated sets download nothing) and its
  # "downloaded and prepared" line after.
  def _log_download_bytes(self):
    logging.getLogger("mixture_dd").info("building data set %s in %s", self.name, self.data_dir)

  def _log_download_done(self):
    """Nothing to add: the line before the build named the directory."""


# ---------------------------------------------------------------- markov --


@dataclasses.dataclass(eq=False)
class MarkovConfig(tfds.core.BuilderConfig):
  vocab_size: int = 8
  length: int = 32
  seed: int = 0
  num_train: int = 20000
  num_test: int = 2000


class Markov(_Builder, skip_registration=True):
  """Samples of `markov.make_chain(vocab_size, seed)`, length D."""

  name = "markov"
  BUILDER_CONFIGS = []

  def _info(self):
    return self.dataset_info_from_configs(
      features=_features(self.builder_config.length),
      description="First-order Markov chain with exact likelihood.",
    )

  def _generate_examples(self, split):
    c = self.builder_config
    init, trans = markov.make_chain(c.vocab_size, c.seed)
    # Separate streams per split so changing num_test leaves train alone.
    rng = np.random.default_rng([c.seed, 0 if split == "train" else 1])
    n = c.num_train if split == "train" else c.num_test
    return _examples(markov.sample(rng, n, c.length, init, trans))


# ------------------------------------------------------------------ tiny --


@dataclasses.dataclass(eq=False)
class TinyConfig(tfds.core.BuilderConfig):
  family: str = "noisy_copies"
  vocab_size: int = 3
  length: int = 3
  seed: int = 0
  num_train: int = 20000
  num_test: int = 2000


def tiny_probs(
  family: str, vocab_size: int, length: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(states [S**D, D], probabilities [S**D]) of an `exact` family."""
  return (
    exact.enumerate_states(vocab_size, length),
    exact.make_family(family, vocab_size, length, seed),
  )


class Tiny(_Builder, skip_registration=True):
  """I.i.d. samples of an `exact.make_family` distribution over S^D."""

  name = "tiny"
  BUILDER_CONFIGS = []

  def _info(self):
    return self.dataset_info_from_configs(
      features=_features(self.builder_config.length),
      description="I.i.d. samples of a tiny exact distribution.",
    )

  def _generate_examples(self, split):
    c = self.builder_config
    states, probs = tiny_probs(c.family, c.vocab_size, c.length, c.seed)
    rng = np.random.default_rng([c.seed, 0 if split == "train" else 1])
    n = c.num_train if split == "train" else c.num_test
    idx = rng.choice(len(states), size=n, p=probs)
    return _examples(states[idx].astype(np.int32))


# ---------------------------------------------------------------- digits --


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
  levels: int = 17


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
  """(train, test) row indices into sklearn's `load_digits()`, fixed."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  n = len(datasets.load_digits().target)
  perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(n)
  num_test = int(round(_DIGITS_TEST_FRACTION * n))
  return np.sort(perm[num_test:]), np.sort(perm[:num_test])


def digits_arrays(levels: int = 17) -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits: tokens [N, 64] int32 in [0, levels), labels [N]."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  if not 2 <= levels <= 17:
    raise ValueError(f"digits levels must be in [2, 17], got {levels}.")
  d = datasets.load_digits()
  tokens = d.data.astype(np.int32)
  if levels < 17:
    tokens = tokens * levels // 17
  return tokens, d.target.astype(np.int32)


class Digits(_Builder, skip_registration=True):
  """scikit-learn's 8x8 digits, D = 64, grey levels quantised to `levels`."""

  name = "digits"
  BUILDER_CONFIGS = []

  def _info(self):
    return self.dataset_info_from_configs(
      features=_features(64),
      supervised_keys=("tokens", "label"),
      description="scikit-learn load_digits(), 8x8, labels 0..9.",
    )

  def _generate_examples(self, split):
    tokens, labels = digits_arrays(self.builder_config.levels)
    train_idx, test_idx = digits_split_indices()
    idx = train_idx if split == "train" else test_idx
    return _examples(tokens[idx], labels[idx])


# ------------------------------------------------------------ pydoc_text --


@dataclasses.dataclass(eq=False)
class PydocTextConfig(tfds.core.BuilderConfig):
  length: int = 64


def pydoc_topics() -> dict[str, str]:
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  return dict(topics.topics)


def pydoc_fingerprint() -> str:
  """Short hash of the topics text: it changes between CPython releases."""
  h = hashlib.sha256()
  for name, body in sorted(pydoc_topics().items()):
    h.update(name.encode() + b"\0" + body.encode() + b"\0")
  return h.hexdigest()[:8]


def pydoc_topic_split() -> tuple[list[str], list[str]]:
  """(train, test) topic names: every 10th sorted topic is test."""
  names = sorted(pydoc_topics())
  test = names[_PYDOC_TEST_EVERY - 1 :: _PYDOC_TEST_EVERY]
  test_set = set(test)
  return [n for n in names if n not in test_set], test


def pydoc_windows(topic_names: list[str], length: int) -> np.ndarray:
  """Non-overlapping windows [N, length] int32 of the named topics' text.

  Windows never cross a topic boundary (each belongs to exactly one topic);
  the last partial window of each topic is dropped.
  """
  topics = pydoc_topics()
  rows = []
  for name in topic_names:
    tokens = text_lib.encode(topics[name], text_lib.PYDOC_ALPHABET)
    n = len(tokens) // length
    rows.append(tokens[: n * length].reshape(n, length))
  return np.concatenate(rows, 0).astype(np.int32)


class PydocText(_Builder, skip_registration=True):
  """Character windows of CPython's pydoc topics, split by topic."""

  name = "pydoc_text"
  BUILDER_CONFIGS = []

  def _info(self):
    return self.dataset_info_from_configs(
      features=_features(self.builder_config.length),
      description="Characters of pydoc_data.topics; 96 symbols "
      "(newline + printable ASCII), others mapped to '?'.",
    )

  def _generate_examples(self, split):
    train, test = pydoc_topic_split()
    names = train if split == "train" else test
    return _examples(pydoc_windows(names, self.builder_config.length))


# ----------------------------------------------------------------- text8 --

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"


@dataclasses.dataclass(eq=False)
class Text8Config(tfds.core.BuilderConfig):
  length: int = 256


class Text8(_Builder, skip_registration=True):
  """text8 (not in the TFDS catalog): the usual 90M/5M/5M character split.

  Needs network to build; `load` never downloads, it asks for `prepare`.
  """

  name = "text8"
  BUILDER_CONFIGS = []

  def _info(self):
    return self.dataset_info_from_configs(
      features=_features(self.builder_config.length),
      homepage="http://mattmahoney.net/dc/textdata.html",
      description="text8 characters: space + a..z (27 symbols).",
    )

  def _split_generators(self, dl_manager):
    path = dl_manager.download_and_extract(TEXT8_URL)
    text = (epath.Path(path) / "text8").read_text()
    bounds = {
      "train": (0, 90_000_000),
      "validation": (90_000_000, 95_000_000),
      "test": (95_000_000, len(text)),
    }
    return {split: self._generate_examples(text[a:b]) for split, (a, b) in bounds.items()}

  def _generate_examples(self, text):
    tokens = text_lib.encode(text, text_lib.TEXT8_ALPHABET, unknown=None)
    n = len(tokens) // self.builder_config.length
    return _examples(tokens[: n * self.builder_config.length].reshape(n, -1))


# --------------------------------------------------------------- factory --

_BUILDERS = {
  "markov": (Markov, MarkovConfig),
  "tiny": (Tiny, TinyConfig),
  "digits": (Digits, DigitsConfig),
  "pydoc_text": (PydocText, PydocTextConfig),
  "text8": (Text8, Text8Config),
}
NAMES = tuple(_BUILDERS)


def config_name(name: str, params: dict) -> str:
  """A directory-safe config name that encodes every parameter."""
  parts = [f"{k}{v}" for k, v in sorted(params.items())]
  if name == "pydoc_text":
    parts.append(f"src{pydoc_fingerprint()}")
  return "_".join(parts).replace("-", "m").replace(".", "p")


def make_builder(name: str, data_dir: str | None = None, **params) -> tfds.core.DatasetBuilder:
  """A builder for `name` with its parameters (see the *Config classes).

  Unknown parameters are an error; missing ones take the config defaults.
  """
  if name not in _BUILDERS:
    raise ValueError(f"unknown generated data set {name!r}; choose one of {NAMES}.")
  cls, config_cls = _BUILDERS[name]
  fields = [
    f.name
    for f in dataclasses.fields(config_cls)
    if f.name not in {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  ]
  unknown = sorted(set(params) - set(fields))
  if unknown:
    raise ValueError(f"{name}: unknown parameter(s) {unknown}; accepted: {fields}.")
  full = {f: params.get(f, getattr(config_cls, f)) for f in fields}
  config = config_cls(
    name=config_name(name, full), version=_VERSION, release_notes=_RELEASE_NOTES, **full
  )
  data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  return cls(config=config, data_dir=data_dir, file_format="array_record")


def prepare(name: str, data_dir: str | None = None, **params) -> tfds.core.DatasetBuilder:
  """`make_builder` then build the files unless they are already cached."""
  builder = make_builder(name, data_dir, **params)
  if not builder.is_prepared():
    tfds.display_progress_bar(False)  # seconds of work: no "Generating splits..." bars
    try:
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
      )
    finally:
      tfds.display_progress_bar(True)
  return builder
