"""Catalog data read by random access: `RecordSource` and `SourceBatcher`.

A tiny array_record data set is built on disk by a TFDS builder defined
here, registered in our registry as a catalog data set (one entry) and read
back through `tfds.data_source`, the path of cifar10, mnist and text8.
"""

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from mixture_dd.data import pipeline, registry, sources

NAME = "mixture_dd_stream_test"
N, D, VOCAB = 103, 5, 128  # 103 examples: 16-example batches leave a remainder.


class MixtureDdStreamTest(tfds.core.GeneratorBasedBuilder):
  """tokens [D] int32 whose token 0 is the example's id (< N), label id % 10."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test data."}
  # TFDS looks for README/CITATION files next to the module; without this it
  # resolves the `tests` package through importlib resources, which fails.
  code_path = epath.Path(__file__)
  pkg_dir_path = epath.Path(__file__).parent

  def _info(self):
    return self.dataset_info_from_configs(
      description="Test records.",
      features=tfds.features.FeaturesDict(
        {
          "tokens": tfds.features.Tensor(shape=(D,), dtype=np.int32),
          "label": tfds.features.Scalar(dtype=np.int32),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(N), "test": self._generate_examples(10)}

  def _generate_examples(self, n):
    for i in range(n):
      yield (
        i,
        {"tokens": np.array([i, i % 7, 3, (5 * i) % 11, 1], np.int32), "label": np.int32(i % 10)},
      )


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("records"))
  MixtureDdStreamTest(data_dir=data_dir, file_format="array_record").download_and_prepare(
    download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
  )
  return data_dir


@pytest.fixture
def config(records_dir):
  """The test set as a catalog data set of ours: one registry entry."""
  registry.register(
    registry.DataSet(
      NAME,
      "tfds_catalog",
      dict(vocab_size=VOCAB, length=D),
      spec=registry.tokens_spec,
      open=registry.open_tfds,
    )
  )
  cfg = pipeline.default_data_config(NAME)
  cfg.data_dir = records_dir
  yield cfg
  registry.unregister(NAME)


@pytest.fixture
def reads(monkeypatch):
  """Every record key read from a data source; whole-split reads fail."""
  keys = []
  real = sources.get_records

  def spy(data_source, k):
    keys.extend(int(x) for x in k)
    return real(data_source, k)

  def whole_split(*args, **kwargs):
    raise AssertionError("the catalog path read a whole split")

  monkeypatch.setattr(sources, "get_records", spy)
  monkeypatch.setattr(tfds, "as_numpy", whole_split)
  monkeypatch.setattr(tfds, "load", whole_split)
  monkeypatch.setattr(registry, "read_all", whole_split)
  return keys


def test_load_opens_records_without_reading_them(config, reads):
  spec, source = pipeline.load(config, "train")
  assert spec == pipeline.DataSpec(NAME, VOCAB, D, 0, None, "tokens")
  assert spec == pipeline.data_spec(config)
  assert isinstance(source, pipeline.RecordSource) and len(source) == N
  assert not reads  # Opening a split reads nothing.
  head = source.head(10)
  assert reads == list(range(10))
  assert head.tokens.shape == (10, D) and head.tokens.dtype == np.uint8
  assert head.labels.dtype == np.int32
  np.testing.assert_array_equal(head.labels, head.tokens[:, 0] % 10)
  # TFDS split slices are read the same way.
  _, half = pipeline.load(config, "train[:50%]")
  assert len(half) == 52
  with pytest.raises(IndexError, match="outside the 103 records"):
    source.read([N])


def test_whole_split_is_every_example_once(config):
  _, source = pipeline.load(config, "train")
  ids = source.to_arrays().tokens[:, 0]
  assert sorted(ids.tolist()) == list(range(N))


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_source_batches_equal_in_memory_batches(config, process_count):
  """Bit for bit the batches of `Batcher` over the same examples, so every
  property of `Batcher` (epochs, reshuffles, seeds) carries over."""
  _, source = pipeline.load(config, "train")
  arrays = source.to_arrays()
  for p in range(process_count):
    kw = dict(seed=3, process_index=p, process_count=process_count)
    streamed = pipeline.make_batcher(source, 16, vocab_size=VOCAB, **kw)
    in_memory = pipeline.make_batcher(arrays, 16, vocab_size=VOCAB, **kw)
    assert isinstance(streamed, pipeline.SourceBatcher)
    assert isinstance(in_memory, pipeline.Batcher)
    with streamed:
      for step in (0, 1, 5, 6, 7, 40):  # 6 steps per epoch: crosses epochs
        got = streamed.batch(step)
        chex.assert_trees_all_equal(got, in_memory.batch(step))
        assert got["tokens"].dtype == np.int32 and got["labels"].dtype == np.int32
        assert got["tokens"].shape == (16 // process_count, D)


def test_two_processes_read_disjoint_slices_of_the_global_batch(config, reads):
  _, source = pipeline.load(config, "train")
  procs = [
    pipeline.make_batcher(source, 16, seed=5, process_index=p, process_count=2, prefetch=0)
    for p in range(2)
  ]
  single = pipeline.make_batcher(source, 16, seed=5, prefetch=0)
  assert not reads  # Making a batcher reads nothing either.
  for step in (0, 3, 6, 13):
    keys, parts = [], []
    for b in procs:
      reads.clear()
      parts.append(b.batch(step))
      keys.append(list(reads))
      # A process reads exactly its own slice: 8 records, nothing more.
      assert sorted(keys[-1]) == sorted(b.local_indices(step).tolist())
    assert not set(keys[0]) & set(keys[1])
    assert set(keys[0]) | set(keys[1]) == set(single.global_indices(step).tolist())
    tokens = np.concatenate([p["tokens"] for p in parts])
    np.testing.assert_array_equal(tokens, single.batch(step)["tokens"])
    assert len(set(tokens[:, 0].tolist())) == 16  # 16 different examples


def test_resumed_run_sees_the_same_batches(config):
  _, source = pipeline.load(config, "train")
  kw = dict(seed=9, process_index=1, process_count=2, vocab_size=VOCAB)
  with pipeline.make_batcher(source, 16, prefetch=2, **kw) as run:
    uninterrupted = [run.batch(s) for s in range(20)]
    # A restart inside one process (steps go back) is served correctly too.
    chex.assert_trees_all_equal(run.batch(4), uninterrupted[4])
  with pipeline.make_batcher(source, 16, prefetch=2, **kw) as resumed:
    for s in range(13, 20):
      chex.assert_trees_all_equal(resumed.batch(s), uninterrupted[s])
  unfetched = pipeline.make_batcher(source, 16, prefetch=0, **kw)
  chex.assert_trees_all_equal(unfetched.batch(17), uninterrupted[17])
  assert not np.array_equal(uninterrupted[0]["tokens"], uninterrupted[1]["tokens"])


def test_tokens_are_checked_batch_by_batch(config):
  _, source = pipeline.load(config, "train")
  # Token 0 is the example id, up to 102: a vocabulary of 50 is too small.
  batcher = pipeline.make_batcher(source, 32, seed=0, vocab_size=50, prefetch=0)
  with pytest.raises(
    ValueError,
    match=r"step 0: tokens lie in .*outside the "
    r"vocabulary \[0, 50\)",
  ):
    batcher.batch(0)


def test_spec_that_does_not_match_the_files_is_an_error(records_dir):
  registry.register(
    registry.DataSet(
      NAME,
      "tfds_catalog",
      dict(vocab_size=VOCAB, length=D - 1),
      spec=registry.tokens_spec,
      open=registry.open_tfds,
    )
  )
  try:
    cfg = pipeline.default_data_config(NAME)
    cfg.data_dir = records_dir
    _, source = pipeline.load(cfg, "train")
    with pytest.raises(ValueError, match="has 5 tokens, the spec says length 4"):
      source.head(3)
  finally:
    registry.unregister(NAME)


def test_batcher_arguments_are_checked(config):
  _, source = pipeline.load(config, "train")
  with pytest.raises(ValueError, match="multiple of process_count"):
    pipeline.make_batcher(source, 10, seed=0, process_count=4)
  with pytest.raises(ValueError, match="exceeds the 103 examples"):
    pipeline.make_batcher(source, 128, seed=0)
  with pytest.raises(ValueError, match="prefetch must be >= 0"):
    pipeline.make_batcher(source, 16, seed=0, prefetch=-1)
  with pytest.raises(TypeError, match="needs an ArraySource"):
    pipeline.make_batcher(np.zeros((20, 3), np.int32), 4, seed=0)


def test_mnist_catalog_path_reads_only_each_process_slice(tmp_path, reads):
  """The real catalog entry, with TFDS's fake examples (offline)."""
  cfg = pipeline.default_data_config("mnist")
  cfg.data_dir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    spec, source = pipeline.load(cfg, "train")
    assert not reads and len(source) == 40
    procs = [
      pipeline.make_batcher(
        source, 8, seed=1, process_index=p, process_count=2, vocab_size=spec.vocab_size, prefetch=0
      )
      for p in range(2)
    ]
    assert not reads
    for step in (0, 4, 5):  # 5 steps per epoch: step 5 starts epoch 1
      reads.clear()
      parts = [b.batch(step) for b in procs]
      want = procs[0].global_indices(step)
      assert reads == want.tolist()  # each record once, process 0 then 1
      for part in parts:
        assert part["tokens"].shape == (4, 784) and part["labels"].shape == (4,)
      # The fake examples are a function of their index: compare directly.
      direct = np.stack([np.asarray(source.data_source[int(k)]["image"]).reshape(-1) for k in want])
      np.testing.assert_array_equal(np.concatenate([p["tokens"] for p in parts]), direct)


def test_own_download_opener_streams_a_prepared_builder(tmp_path):
  """text8's path (our builder, array_record, never downloaded here), on a
  builder that builds offline: the same examples as the in-memory load."""
  cfg = pipeline.default_data_config("markov")
  cfg.update(data_dir=str(tmp_path), num_train=300, num_test=20)
  spec, in_memory = pipeline.load(cfg, "train")
  fields = {k: cfg[k] for k in registry.get("markov").defaults}
  source = registry.open_own_download(spec, str(tmp_path), "train", fields)
  assert isinstance(source, pipeline.RecordSource)
  streamed = source.to_arrays()
  chex.assert_trees_all_equal(
    (streamed.tokens, streamed.labels), (in_memory.tokens, in_memory.labels)
  )
  a = pipeline.make_batcher(source, 32, seed=2, vocab_size=8)
  b = pipeline.make_batcher(in_memory, 32, seed=2, vocab_size=8)
  for step in (0, 9, 10):
    chex.assert_trees_all_equal(a.batch(step), b.batch(step))
  a.close()
  fields["seed"] = 1  # Not built under tmp_path.
  with pytest.raises(ValueError, match=r"not prepared.*builders\.prepare\('markov'"):
    registry.open_own_download(spec, str(tmp_path), "train", fields)
