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
import json
import math
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mixture_dd import (
  checkpoints,
  configuration,
  di4c,
  distill,
  networks,
  runs,
  sharding,
  teacher_training,
  train_step,
)
from mixture_dd.data import pipeline
from mixture_dd.data import text as text_lib

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIG_FILES = sorted(
  p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")) if not os.path.basename(p).startswith("_")
)
# Full-size configs for accelerators: their parameter counts must stay realistic.
FULL_SIZE = {"cifar10_gaussian": 50e6, "text8_masked": 50e6}
SHRINK = dict(width=32, depth=1, heads=2)
BATCH = 8  # divisible by the 8 test devices (conftest)


def load(path):
  spec = importlib.util.spec_from_file_location(
    "cfg_" + os.path.splitext(os.path.basename(path))[0], path
  )
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
    return pipeline.DataSpec(
      "text8",
      len(text_lib.TEXT8_ALPHABET),
      config.data.length,
      0,
      None,
      "text",
      text_lib.TEXT8_ALPHABET,
    )
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
  loss_fn = teacher_training.teacher_loss_fn(config, model, process)
  tokens = rng.integers(0, spec.vocab_size, (4 * BATCH, spec.length)).astype(np.int32)
  labels = rng.integers(0, max(spec.num_classes, 1), 4 * BATCH).astype(np.int32)
  return teacher_training.TeacherSetup(
    config, spec, pipeline.ArraySource(tokens, labels), process, model, loss_fn
  )


def _one_step(config, setup):
  spec, source, model, loss_fn = setup.spec, setup.source, setup.model, setup.loss_fn
  batcher = pipeline.make_batcher(source, BATCH, seed=0, vocab_size=spec.vocab_size)
  opt = train_step.make_optimizer(config.optim, config.train.num_steps)
  mesh = sharding.make_mesh()
  state = sharding.replicate(
    train_step.init_state(train_step.init_params(model, config.seed), opt), mesh
  )
  jstep = sharding.shard_step(train_step.make_step(loss_fn, opt, config.optim.ema_decay), mesh)
  state, metrics = jstep(
    state, sharding.global_batch(mesh, batcher.batch(0)), jax.random.key(0), None
  )
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  for k, v in metrics.items():
    assert np.all(np.isfinite(v)), f"{k} = {v}"
  # A freshly initialised denoiser is near uniform: its per-token
  # cross-entropy is about log(vocab), far from 0 or from blowing up.
  assert 0.0 < float(metrics["loss"]) < 20 * math.log(spec.vocab_size), metrics


def test_configs_are_found():
  names = {_name(p) for p in CONFIG_FILES}
  assert {"tiny", "digits", "markov", "pydoc_text", "cifar10_gaussian", "text8_masked"} <= names, (
    names
  )


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_name)
def test_config_loads_and_round_trips_through_json(path):
  config = load(path)
  for section in ("data", "optim", "train") if _is_teacher(config) else ("optim", "train"):
    assert section in config, f"{_name(path)} lacks config.{section}"
  # launch.train / launch.distill write config.json and load_run reads it
  # back: every field must survive with its value.
  back = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  assert back.to_dict() == json.loads(json.dumps(config.to_dict()))


# The teacher config each distillation config is meant for (shrunk, with
# random weights: the test checks that the pieces fit, not quality). A new
# distillation config must add its teacher here.
def _maskgit_teacher():
  c = load(os.path.join(CONFIG_DIR, "digits.py"))
  c.process.update(name="masked", schedule="arccos")
  c.model.update(class_conditional=True, label_dropout=0.1)
  return c


TEACHER_OF = {
  "digits_distill": lambda: load(os.path.join(CONFIG_DIR, "digits.py")),
  "digits_gaussian_distill": lambda: load(os.path.join(CONFIG_DIR, "digits_gaussian.py")),
  "markov_distill": lambda: load(os.path.join(CONFIG_DIR, "markov.py")),
  "pydoc_text_distill": lambda: load(os.path.join(CONFIG_DIR, "pydoc_text.py")),
  "cifar10_tauldr_distill": lambda: load(os.path.join(CONFIG_DIR, "cifar10_gaussian.py")),
  "text8_sdtt_distill": lambda: load(os.path.join(CONFIG_DIR, "text8_masked.py")),
  "maskgit_distill": _maskgit_teacher,
}


def _teacher_run(tconf, workdir):
  """A teacher workdir (config.json + one checkpoint) with random weights."""
  spec = pipeline.data_spec(tconf.data)
  configuration.validate(tconf, spec)
  model = configuration.make_model(tconf, spec, configuration.make_process(tconf, spec))
  checkpoints.write_config(workdir, tconf)
  state = train_step.init_state(
    train_step.init_params(model, 0), train_step.make_optimizer(tconf.optim, 1)
  )
  mngr = checkpoints.checkpoint_manager(os.path.join(workdir, "checkpoints"))
  checkpoints.save(mngr, state, {"signature": configuration.model_signature(tconf, spec)})
  mngr.wait_until_finished()
  mngr.close()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_name)
def test_distill_config_resolves_validates_and_takes_one_di4c_step(path, tmp_path):
  config = load(path)
  if _is_teacher(config):
    pytest.skip("teacher config: test_teacher_config_takes_one_train_step")
  if config.teacher.kind == "network":
    assert _name(path) in TEACHER_OF, f"add the teacher of {_name(path)} to TEACHER_OF"
    tconf = _small(TEACHER_OF[_name(path)](), tmp_path)
    _teacher_run(tconf, str(tmp_path / "teacher"))
    config.teacher.workdir = str(tmp_path / "teacher")
  # One latent per micro-batch (chunking stays on) and 2 examples: the
  # pixel config's D = 3072 makes every student pass expensive on a CPU.
  chunks = config.distill.latent_chunks
  config.distill.num_latents = chunks if chunks > 1 else 2
  # Shrunk after resolve: the student's model section comes from its teacher.
  config = _small(runs.resolve(config), tmp_path)
  spec = pipeline.data_spec(config.data)
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  teacher = distill.load_teacher(config, spec, process)
  model = configuration.make_model(config, spec, process, latent=True)
  teacher_params = teacher.frozen if config.teacher.kind == "network" else None
  params = di4c.initial_student(model, config.distill, 0, teacher_params)
  loss_fn = di4c.student_loss(model, teacher, process, config.distill, config.model.label_dropout)
  opt = train_step.make_optimizer(config.optim, config.train.num_steps)
  step = jax.jit(train_step.make_step(loss_fn, opt, config.optim.ema_decay))
  rng = np.random.default_rng(0)
  batch = {
    "tokens": rng.integers(0, spec.vocab_size, (2, spec.length)).astype(np.int32),
    "labels": rng.integers(0, max(spec.num_classes, 1), 2).astype(np.int32),
  }
  state, metrics = step(
    train_step.init_state(params, opt), batch, jax.random.key(0), teacher.frozen
  )
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  for k, v in metrics.items():
    assert np.all(np.isfinite(v)), f"{_name(path)}: {k} = {v}"
  assert float(metrics["loss"]) > 0.0 and float(metrics["grad_norm"]) > 0.0, metrics


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_name)
def test_teacher_config_takes_one_train_step(path, tmp_path):
  config = load(path)
  if not _is_teacher(config):
    pytest.skip("distillation config: covered by the distillation tests")
  config = _small(config, tmp_path)
  name = config.data.name
  if name in pipeline.TFDS_CATALOG:
    # Fake examples with the real feature spec through the ordinary TFDS path.
    with tfds.testing.mock_data(num_examples=4 * BATCH, policy=tfds.testing.MockPolicy.USE_CODE):
      setup = teacher_training.setup_teacher(config)
    assert setup.spec == _unprepared_spec(config)
  elif name in pipeline.OWN_DOWNLOAD:
    with pytest.raises(ValueError, match="not prepared.*prepare"):
      pipeline.load(config.data, "train")
    setup = _teacher_from_random_tokens(config, _unprepared_spec(config), np.random.default_rng(0))
  else:
    setup = teacher_training.setup_teacher(config)
  _one_step(config, setup)


@pytest.mark.parametrize("name,min_params", sorted(FULL_SIZE.items()))
def test_full_size_configs_have_realistic_parameter_counts(name, min_params):
  config = load(os.path.join(CONFIG_DIR, name + ".py"))
  spec = _unprepared_spec(config)
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  model = configuration.make_model(config, spec, process)
  # Shapes only: no 100M-parameter initialisation on the CPU.
  shapes = jax.eval_shape(lambda: train_step.init_params(model, 0))
  n = networks.count_params(shapes)
  assert min_params < n < 500e6, f"{name}: {n:,} parameters"
  assert networks.flops_per_example(model) > 1e10  # an accelerator-sized model
