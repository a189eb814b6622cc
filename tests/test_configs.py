"""Every config in configs/ loads, validates, builds and takes one train step.

The configs are globbed, so a new file is covered without editing this test.
Models are shrunk (width 32, depth 1, 2 heads, batch 8) and generated data
sets are built small under tmp_path: the test checks that the numbers fit
together (data, process, model, optimizer), not that the model is good.
Catalog data (cifar10) comes from `tfds.testing.mock_data`; text8 cannot be
mocked through TFDS (it is our own builder), so its step runs on random
tokens of the right shape after checking that loading asks for `prepare`.
"""
import glob
import importlib.util
import math
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mixture_dd import configuration, losses, networks, train
from mixture_dd.data import pipeline
from mixture_dd.data import text as text_lib

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                      if not os.path.basename(p).startswith("_"))
# Full-size configs for accelerators: their parameter counts must stay realistic.
FULL_SIZE = {"cifar10_gaussian": 50e6, "text8_masked": 50e6}
SHRINK = dict(width=32, depth=1, heads=2)
BATCH = 8  # divisible by the 8 test devices (conftest)


def load(path):
  spec = importlib.util.spec_from_file_location(
      "cfg_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _name(path):
  return os.path.splitext(os.path.basename(path))[0]


def _is_teacher(config):
  # Distillation configs carry `distill` and `teacher` sections and are
  # exercised by the distillation tests; here they only need to load.
  return "distill" not in config


def _unprepared_spec(config):
  """The spec `pipeline.load` would return for data this machine lacks."""
  name = config.data.name
  if name == "cifar10":
    return pipeline.DataSpec("cifar10", 256, 3072, 10, (32, 32, 3), "image")
  if name == "text8":
    return pipeline.DataSpec("text8", len(text_lib.TEXT8_ALPHABET), config.data.length, 0,
                             None, "text", text_lib.TEXT8_ALPHABET)
  raise AssertionError(f"no hand-made spec for {name}")


def _small(config, tmp_path):
  config.model.update(SHRINK)
  config.train.batch_size = BATCH
  if "data_dir" in config.data:
    config.data.data_dir = str(tmp_path / "tfds")
  if "num_train" in config.data:
    config.data.num_train, config.data.num_test = 200, 20
  return config


def _teacher_from_random_tokens(config, spec, rng):
  """setup_teacher's objects, for data that cannot be loaded here."""
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  model = configuration.make_model(config, spec, process)
  logits_fn = train.teacher_logits_fn(model, config.model.label_dropout)

  def loss_fn(params, batch, key, frozen=None):
    del frozen
    return losses.teacher_loss(logits_fn, params, process, batch["tokens"], key,
                               t_min=config.loss.t_min,
                               labels=batch["labels"] if model.num_classes else None)
  tokens = rng.integers(0, spec.vocab_size, (4 * BATCH, spec.length)).astype(np.int32)
  labels = rng.integers(0, max(spec.num_classes, 1), 4 * BATCH).astype(np.int32)
  return spec, pipeline.ArraySource(tokens, labels), process, model, loss_fn


def _one_step(config, setup):
  spec, source, process, model, loss_fn = setup
  batcher = pipeline.Batcher(source.tokens, source.labels, BATCH, seed=0,
                             vocab_size=spec.vocab_size)
  opt = train.make_optimizer(config.optim, config.train.num_steps)
  mesh = train.make_mesh()
  state = train.replicate(train.init_state(train.init_params(model, config.seed), opt), mesh)
  jstep = train.shard_step(train.make_step(loss_fn, opt, config.optim.ema_decay), mesh)
  state, metrics = jstep(state, train.global_batch(mesh, batcher.batch(0)), jax.random.key(0),
                         None)
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  for k, v in metrics.items():
    assert np.all(np.isfinite(v)), f"{k} = {v}"
  # A freshly initialised denoiser is near uniform: its per-token
  # cross-entropy is about log(vocab), far from 0 or from blowing up.
  assert 0.0 < float(metrics["loss"]) < 20 * math.log(spec.vocab_size), metrics


def test_configs_are_found():
  names = {_name(p) for p in CONFIG_FILES}
  assert {"tiny", "digits", "markov", "pydoc_text", "cifar10_gaussian",
          "text8_masked"} <= names, names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_name)
def test_config_loads(path):
  config = load(path)
  for section in ("data", "optim", "train") if _is_teacher(config) else ("optim", "train"):
    assert section in config, f"{_name(path)} lacks config.{section}"
  # Every field round-trips through JSON: launch.train writes it to config.json.
  assert config.to_json_best_effort()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_name)
def test_teacher_config_takes_one_train_step(path, tmp_path):
  config = load(path)
  if not _is_teacher(config):
    pytest.skip("distillation config: covered by the distillation tests")
  config = _small(config, tmp_path)
  name = config.data.name
  if name in pipeline.TFDS_CATALOG:
    # Fake examples with the real feature spec through the ordinary TFDS path.
    with tfds.testing.mock_data(num_examples=4 * BATCH,
                                policy=tfds.testing.MockPolicy.USE_CODE):
      setup = train.setup_teacher(config)
    assert setup[0] == _unprepared_spec(config)
  elif name in pipeline.OWN_DOWNLOAD:
    with pytest.raises(ValueError, match="not prepared.*prepare"):
      pipeline.load(config.data, "train")
    setup = _teacher_from_random_tokens(config, _unprepared_spec(config),
                                        np.random.default_rng(0))
  else:
    setup = train.setup_teacher(config)
  _one_step(config, setup)


@pytest.mark.parametrize("name,min_params", sorted(FULL_SIZE.items()))
def test_full_size_configs_have_realistic_parameter_counts(name, min_params):
  config = load(os.path.join(CONFIG_DIR, name + ".py"))
  spec = _unprepared_spec(config)
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  model = configuration.make_model(config, spec, process)
  # Shapes only: no 100M-parameter initialisation on the CPU.
  shapes = jax.eval_shape(lambda: train.init_params(model, 0))
  n = networks.count_params(shapes)
  assert min_params < n < 500e6, f"{name}: {n:,} parameters"
  assert networks.flops_per_example(model) > 1e10  # an accelerator-sized model
