"""Tests of mixture_dd.data: exact Markov maths, builders, registry, load, Batcher.

Catalog data read by random access (RecordSource, SourceBatcher) is tested in
test_streaming.py.
"""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mixture_dd import exact
from mixture_dd.data import builders, markov, pipeline, registry
from mixture_dd.data import text as text_lib


def _config(name, data_dir, **overrides):
  cfg = pipeline.default_data_config(name)
  cfg.data_dir = str(data_dir)
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


# ---------------------------------------------------------------- markov --


def test_markov_log_prob_normalised_and_entropy_exact():
  s, d = 3, 4
  init, trans = markov.make_chain(s, seed=1)
  assert init.min() >= 1e-7 and trans.min() >= 1e-7  # Full support.
  np.testing.assert_allclose(trans.sum(-1), 1.0, rtol=1e-12)
  states = np.array(list(itertools.product(range(s), repeat=d)))
  lp = markov.log_prob(states, init, trans)
  assert lp.dtype == np.float64 and lp.shape == (s**d,)
  np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
  brute = -(np.exp(lp) * lp).sum() / d
  np.testing.assert_allclose(markov.entropy_rate(init, trans, d), brute, rtol=1e-12)


def test_markov_sampler_matches_entropy_rate():
  s, d, n = 8, 32, 20000
  init, trans = markov.make_chain(s, seed=0)
  x = markov.sample(np.random.default_rng(0), n, d, init, trans)
  assert x.shape == (n, d) and x.dtype == np.int32
  assert x.min() >= 0 and x.max() < s
  nll = -markov.log_prob(x, init, trans) / d
  stderr = nll.std(ddof=1) / np.sqrt(n)
  rate = markov.entropy_rate(init, trans, d)
  assert abs(nll.mean() - rate) < 4 * stderr, (nll.mean(), rate, stderr)
  # Strongly correlated: well below the uniform entropy log(S).
  assert rate < 0.8 * np.log(s)


def test_markov_sampler_first_two_marginals():
  init, trans = markov.make_chain(3, seed=2)
  x = markov.sample(np.random.default_rng(1), 50000, 2, init, trans)
  joint = np.zeros((3, 3))
  np.add.at(joint, (x[:, 0], x[:, 1]), 1.0)
  np.testing.assert_allclose(joint / len(x), init[:, None] * trans, atol=0.01)


# -------------------------------------------------------------- builders --


def test_markov_builder_and_cache(tmp_path):
  cfg = _config("markov", tmp_path, num_train=500, num_test=100)
  spec, train = pipeline.load(cfg, "train")
  _, test = pipeline.load(cfg, "test")
  assert (spec.vocab_size, spec.length, spec.num_classes, spec.kind) == (8, 32, 0, "tokens")
  assert train.tokens.shape == (500, 32) and test.tokens.shape == (100, 32)
  assert train.tokens.min() >= 0 and train.tokens.max() < 8
  assert (train.labels == 0).all()
  # Second load reads the cache, and gives identical arrays.
  _, again = pipeline.load(cfg, "train")
  np.testing.assert_array_equal(train.tokens, again.tokens)
  # A fresh build elsewhere with the same seed gives the same data.
  _, other = pipeline.load(_config("markov", tmp_path / "b", num_train=500, num_test=100), "train")
  np.testing.assert_array_equal(train.tokens, other.tokens)
  # The built data follow the chain: NLL per token near the entropy rate.
  init, trans = markov.make_chain(8, seed=0)
  nll = -markov.log_prob(train.tokens, init, trans) / 32
  rate = markov.entropy_rate(init, trans, 32)
  assert abs(nll.mean() - rate) < 5 * nll.std() / np.sqrt(len(nll))


def test_tiny_builder_samples_family(tmp_path):
  cfg = _config("tiny", tmp_path, num_train=3000, num_test=50)
  spec, train = pipeline.load(cfg, "train")
  assert (spec.vocab_size, spec.length) == (3, 3)
  assert train.tokens.shape == (3000, 3) and train.tokens.dtype == np.uint8
  probs = exact.make_family("noisy_copies", 3, 3, 0)
  counts = np.bincount(exact.state_index(train.tokens.astype(np.int64), 3), minlength=27)
  np.testing.assert_allclose(counts / 3000, probs, atol=0.03)


def test_digits_builder(tmp_path):
  spec, train = pipeline.load(_config("digits", tmp_path), "train")
  _, test = pipeline.load(_config("digits", tmp_path), "test")
  assert (spec.vocab_size, spec.length, spec.num_classes, spec.image_shape, spec.kind) == (
    17,
    64,
    10,
    (8, 8),
    "image",
  )
  assert len(train) + len(test) == 1797 and 150 <= len(test) <= 200
  assert train.tokens.max() == 16 and train.tokens.min() == 0
  assert set(np.unique(train.labels)) == set(range(10))
  train_idx, test_idx = builders.digits_split_indices()
  assert not set(train_idx) & set(test_idx)
  assert len(set(train_idx) | set(test_idx)) == 1797
  # The stored test set is exactly those rows (as a multiset of images).
  tokens, labels = builders.digits_arrays()
  want = sorted(map(bytes, np.c_[tokens[test_idx], labels[test_idx]].astype(np.uint8)))
  got = sorted(map(bytes, np.c_[test.tokens, test.labels].astype(np.uint8)))
  assert want == got
  spec4, train4 = pipeline.load(_config("digits", tmp_path, levels=4), "train")
  assert spec4.vocab_size == 4 and train4.tokens.max() == 3


def test_pydoc_text_builder(tmp_path):
  spec, train = pipeline.load(_config("pydoc_text", tmp_path, length=32), "train")
  _, test = pipeline.load(_config("pydoc_text", tmp_path, length=32), "test")
  assert (spec.vocab_size, spec.length, spec.kind) == (96, 32, "text")
  assert train.tokens.shape[1] == 32 and len(train) > 10 * len(test) > 0
  assert train.tokens.max() < 96
  train_topics, test_topics = builders.pydoc_topic_split()
  assert test_topics and not set(train_topics) & set(test_topics)
  # Every test window is text of a test topic.
  test_text = "\x00".join(
    text_lib.decode(text_lib.encode(builders.pydoc_topics()[t])) for t in test_topics
  )
  for window in pipeline.decode_text(spec, test.tokens[:20]):
    assert window in test_text


def test_text_encode_decode_roundtrip():
  s = "def f(x):\n  return x ~ 1"
  np.testing.assert_array_equal(text_lib.encode(s).dtype, np.int32)
  assert text_lib.decode(text_lib.encode(s)) == s
  assert text_lib.decode(text_lib.encode("a\tb\u00e9")) == "a?b?"
  assert len(text_lib.PYDOC_ALPHABET) == 96
  with pytest.raises(ValueError, match="not in the alphabet"):
    text_lib.encode("Hi", text_lib.TEXT8_ALPHABET, unknown=None)


# ------------------------------------------------------------------ load --


def test_config_validation(tmp_path):
  with pytest.raises(ValueError, match="not a known data set"):
    pipeline.load({"name": "nope", "data_dir": None}, "train")
  cfg = _config("digits", tmp_path)
  cfg.levls = 4
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['levls'\]"):
    pipeline.load(cfg, "train")
  with pytest.raises(ValueError, match=r"missing field\(s\) \['levels'\]"):
    pipeline.load({"name": "digits", "data_dir": str(tmp_path)}, "train")
  with pytest.raises(ValueError, match="no split 'valid'"):
    pipeline.load(_config("digits", tmp_path), "valid")
  with pytest.raises(ValueError, match="unknown data set"):
    pipeline.default_data_config("nope")


@pytest.mark.parametrize("name", ["mnist", "cifar10", "text8"])
def test_catalog_missing_error(tmp_path, name):
  with pytest.raises(ValueError, match=r"not prepared.*config\.data\.data_dir"):
    pipeline.load(_config(name, tmp_path), "train")


def test_mnist_through_tfds_path(tmp_path):
  with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
    spec, source = pipeline.load(_config("mnist", tmp_path), "train")
    head = source.head(100)
  assert (spec.vocab_size, spec.length, spec.image_shape) == (256, 784, (28, 28, 1))
  assert spec == pipeline.data_spec(_config("mnist", tmp_path))
  # Random access, not a split in memory: no `tokens` array to reach for.
  assert isinstance(source, pipeline.RecordSource) and len(source) == 7
  with pytest.raises(AttributeError, match="does not hold the split"):
    _ = source.tokens
  assert head.tokens.shape == (7, 784) and head.tokens.dtype == np.uint8
  assert head.labels.shape == (7,) and head.labels.dtype == np.int32


# -------------------------------------------------------------- registry --


def test_registry_is_the_one_list_of_data_sets(tmp_path):
  assert (
    pipeline.NAMES
    == registry.names()
    == ("markov", "tiny", "digits", "pydoc_text", "mnist", "cifar10", "text8")
  )
  assert (pipeline.GENERATED, pipeline.TFDS_CATALOG, pipeline.OWN_DOWNLOAD) == (
    ("markov", "tiny", "digits", "pydoc_text"),
    ("mnist", "cifar10"),
    ("text8",),
  )
  for name in registry.names():
    entry = registry.get(name)
    cfg = _config(name, tmp_path)
    assert set(cfg) == {"name", "data_dir"} | set(entry.defaults)
    spec = pipeline.data_spec(cfg)
    assert spec.name == name and spec.vocab_size >= 2 and spec.length >= 1
    if spec.image_shape is not None:
      assert np.prod(spec.image_shape) == spec.length
  # A spec costs no data: nothing was built under data_dir.
  assert not list(tmp_path.iterdir())


def _toy_entry(**overrides):
  """A data set of five fixed sequences, opened from memory."""
  tokens = np.array(
    [[0, 1, 2, 3], [1, 1, 1, 1], [3, 2, 1, 0], [2, 2, 0, 0], [0, 3, 0, 3]], np.uint8
  )

  def open_toy(spec, data_dir, split, fields):
    del data_dir, fields
    rows = tokens if split == "train" else tokens[:2]
    return pipeline.ArraySource(rows[:, : spec.length], np.zeros(len(rows), np.int32))

  kw = dict(
    name="toy",
    origin="generated",
    defaults=dict(length=4),
    spec=lambda name, f: pipeline.DataSpec(name, 4, f["length"], 0, None, "tokens"),
    open=open_toy,
  )
  kw.update(overrides)
  return registry.DataSet(**kw)


@pytest.fixture
def toy():
  registry.register(_toy_entry())
  yield
  registry.unregister("toy")


def test_a_data_set_is_one_registry_entry(toy):
  cfg = pipeline.default_data_config("toy")
  assert cfg.to_dict() == {"name": "toy", "data_dir": None, "length": 4}
  cfg.length = 3
  spec, source = pipeline.load(cfg, "train")
  assert spec == pipeline.DataSpec("toy", 4, 3, 0, None, "tokens")
  assert source.tokens.shape == (5, 3) and len(pipeline.load(cfg, "test")[1]) == 2
  batcher = pipeline.make_batcher(source, 4, seed=0, vocab_size=4)
  assert batcher.batch(0)["tokens"].shape == (4, 3)
  cfg.width = 2
  with pytest.raises(ValueError, match=r"'toy': unknown field\(s\) \['width'\]"):
    pipeline.load(cfg, "train")


def test_registry_rejects_bad_entries(toy):
  with pytest.raises(ValueError, match="'toy' is already registered"):
    registry.register(_toy_entry())
  with pytest.raises(ValueError, match="origin='web'"):
    _toy_entry(name="t2", origin="web")
  with pytest.raises(ValueError, match="leave them out of defaults"):
    _toy_entry(name="t2", defaults=dict(length=4, data_dir=None))
  with pytest.raises(TypeError):  # Entries are frozen, defaults read-only.
    registry.get("toy").defaults["length"] = 5
  registry.unregister("toy")
  with pytest.raises(ValueError, match="unknown data set 'toy'"):
    pipeline.default_data_config("toy")


def test_head_reads_the_first_examples():
  tokens, labels = _data()
  head = pipeline.ArraySource(tokens, labels).head(7)
  np.testing.assert_array_equal(head.tokens, tokens[:7])
  np.testing.assert_array_equal(head.labels, labels[:7])
  assert len(pipeline.ArraySource(tokens, labels).head(1000)) == len(tokens)


# --------------------------------------------------------------- Batcher --


def _data(n=103, d=5):
  tokens = np.arange(n * d, dtype=np.int32).reshape(n, d) % 7
  tokens[:, 0] = np.arange(n)  # Column 0 identifies the example.
  return tokens, np.arange(n, dtype=np.int32) % 10


def test_batcher_shapes_and_determinism():
  tokens, labels = _data()
  a = pipeline.Batcher(tokens, labels, 16, seed=3)
  b = pipeline.Batcher(tokens, labels, 16, seed=3)
  for step in (0, 1, 7, 50):
    ba, bb = a.batch(step), b.batch(step)
    assert ba["tokens"].shape == (16, 5) and ba["tokens"].dtype == np.int32
    assert ba["labels"].shape == (16,) and ba["labels"].dtype == np.int32
    np.testing.assert_array_equal(ba["tokens"], bb["tokens"])
    np.testing.assert_array_equal(ba["labels"], labels[ba["tokens"][:, 0]])
  # Resuming: a fresh Batcher asked for step 50 first agrees too.
  c = pipeline.Batcher(tokens, labels, 16, seed=3)
  np.testing.assert_array_equal(c.batch(50)["tokens"], a.batch(50)["tokens"])
  assert not np.array_equal(a.batch(0)["tokens"], a.batch(1)["tokens"])
  other_seed = pipeline.Batcher(tokens, labels, 16, seed=4)
  assert not np.array_equal(a.batch(0)["tokens"], other_seed.batch(0)["tokens"])


def test_batcher_epochs_cover_without_repeats_and_reshuffle():
  tokens, labels = _data()
  batcher = pipeline.Batcher(tokens, labels, 16, seed=0)
  spe = batcher.steps_per_epoch
  assert spe == 103 // 16
  epoch0 = np.concatenate([batcher.batch(s)["tokens"][:, 0] for s in range(spe)])
  epoch1 = np.concatenate([batcher.batch(s)["tokens"][:, 0] for s in range(spe, 2 * spe)])
  assert len(set(epoch0)) == spe * 16  # No repeats within an epoch.
  assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("process_count", [2, 4])
def test_batcher_processes_partition_global_batch(process_count):
  tokens, labels = _data()
  single = pipeline.Batcher(tokens, labels, 16, seed=5)
  for step in (0, 9):
    parts = [
      pipeline.Batcher(
        tokens, labels, 16, seed=5, process_index=p, process_count=process_count
      ).batch(step)
      for p in range(process_count)
    ]
    assert all(p["tokens"].shape == (16 // process_count, 5) for p in parts)
    np.testing.assert_array_equal(
      np.concatenate([p["tokens"] for p in parts]), single.batch(step)["tokens"]
    )


def test_batcher_validation():
  tokens, labels = _data()
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.Batcher(tokens, labels, 10, seed=0, process_count=4)
  with pytest.raises(ValueError, match="empty"):
    pipeline.Batcher(tokens[:0], labels[:0], 4, seed=0)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    pipeline.Batcher(tokens, labels, 4, seed=0, vocab_size=7)
  with pytest.raises(ValueError, match="must be integers"):
    pipeline.Batcher(tokens.astype(np.float32), labels, 4, seed=0)
  with pytest.raises(ValueError, match="exceeds"):
    pipeline.Batcher(tokens, labels, 128, seed=0)
