"""Every config in mixture_dd.configs loads, validates, builds and takes one train step.

The configs are listed from the package, so a new file is covered without editing this test.
Models are shrunk (width 32, depth 1, 2 heads, batch 8) and generated data
sets are built small under tmp_path: the test checks that the numbers fit
together (data, process, model, optimizer), not that the model is good.
Catalog data (cifar10) comes from `tfds.testing.mock_data`; text8 cannot be
mocked through TFDS (it is our own builder), so its step runs on random
tokens of the right shape after checking that loading asks for `prepare`.

A distillation config takes one Di4C step when it is the first of its recipe (preset, teacher
kind, process; `STEPPED`); the others of a recipe run the same code on other shapes, so they
are resolved, validated and traced abstractly (`jax.eval_shape`: every shape fits, nothing is
compiled).
"""

import importlib
import json
import math
import os
import pkgutil

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mixture_dd import (
  checkpoints,
  configs,
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

CONFIG_NAMES = sorted(m.name for m in pkgutil.iter_modules(configs.__path__))
# Full-size configs for accelerators: their parameter counts must stay realistic.
FULL_SIZE = {"cifar10_gaussian": 50e6, "maskgit": 50e6, "text8_masked": 50e6}
SHRINK = dict(width=32, depth=1, heads=2)
BATCH = 8  # divisible by the 8 test devices (conftest)
# XLA options that cut a CPU compile several-fold: these steps must run and be finite, not
# fast (as in benchmarks/accelerator.py's small mode).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run(jitted, *args):
  """One call of a jitted function, compiled with FAST_COMPILE on a CPU."""
  options = FAST_COMPILE if jax.default_backend() == "cpu" else None
  return jitted.lower(*args).compile(compiler_options=options)(*args)


def load(name):
  return importlib.import_module("mixture_dd.configs." + name).get_config()


def _is_teacher(config):
  # Distillation configs carry `distill` and `teacher` sections and are
  # exercised by the distillation tests; here they only need to load.
  return "distill" not in config


def _unprepared_spec(config):
  """The spec `pipeline.load` would return for data this machine lacks (or, for generated
  data, `pipeline.data_spec`)."""
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
  if name in pipeline.TFDS_CATALOG or name in pipeline.OWN_DOWNLOAD:
    raise AssertionError(f"no hand-made spec for {name}")
  return pipeline.data_spec(config.data)


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
  state, metrics = _run(
    jstep, state, sharding.global_batch(mesh, batcher.batch(0)), jax.random.key(0), None
  )
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  for k, v in metrics.items():
    assert np.all(np.isfinite(v)), f"{k} = {v}"
  # A freshly initialised denoiser is near uniform: its per-token
  # cross-entropy is about log(vocab), far from 0 or from blowing up.
  assert 0.0 < float(metrics["loss"]) < 20 * math.log(spec.vocab_size), metrics


def test_configs_are_found():
  names = set(CONFIG_NAMES)
  assert {"tiny", "digits", "markov", "pydoc_text", "cifar10_gaussian", "text8_masked"} <= names, (
    names
  )


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_loads_and_round_trips_through_json(name):
  config = load(name)
  for section in ("data", "optim", "train") if _is_teacher(config) else ("optim", "train"):
    assert section in config, f"{name} lacks config.{section}"
  # launch.train / launch.distill write config.json and load_run reads it
  # back: every field must survive with its value.
  back = ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))
  assert back.to_dict() == json.loads(json.dumps(config.to_dict()))


# The teacher config each distillation config is meant for (shrunk, with
# random weights: the test checks that the pieces fit, not quality). A new
# distillation config must add its teacher here.
TEACHER_OF = {
  "digits_distill": "digits",
  "digits_gaussian_distill": "digits_gaussian",
  "markov_distill": "markov",
  "markov_local_distill": "markov",
  "markov_coupled_distill": "markov",
  "pydoc_text_distill": "pydoc_text",
  "pydoc_text_local_distill": "pydoc_text",
  "cifar10_tauldr_distill": "cifar10_gaussian",
  "text8_sdtt_distill": "text8_masked",
  "maskgit_distill": "maskgit",
}
DISTILL_NAMES = [n for n in CONFIG_NAMES if not _is_teacher(load(n))]


def _data_source(name):
  """The config whose data and process a distillation config uses: its teacher's (a network
  teacher) or its own."""
  config = load(name)
  if config.teacher.kind != "network":
    return config
  assert name in TEACHER_OF, f"add the teacher of {name} to TEACHER_OF"
  return load(TEACHER_OF[name])


def _recipe(name):
  """What sets a distillation config's code path: (preset, teacher kind, process)."""
  config = load(name)
  return config.distill.preset, config.teacher.kind, _data_source(name).process.name


def _stepped():
  """The config that takes the Di4C step of each recipe: the one of shortest sequences (then
  by name), so the pixel config's D = 3072 is traced, not run."""
  first = {}
  for name in sorted(DISTILL_NAMES, key=lambda n: (_unprepared_spec(_data_source(n)).length, n)):
    first.setdefault(_recipe(name), name)
  return frozenset(first.values())


STEPPED = _stepped()


def test_every_recipe_takes_a_di4c_step():
  recipes = {_recipe(n) for n in DISTILL_NAMES}
  assert len(STEPPED) == len(recipes) and {_recipe(n) for n in STEPPED} == recipes
  # The chunked (lax.map) path runs too (the full-size presets chunk their latents).
  assert any(load(n).distill.latent_chunks > 1 for n in STEPPED)


def _teacher_run(tconf, workdir, checkpoint: bool):
  """A teacher workdir: config.json, and with `checkpoint` one checkpoint of random weights."""
  spec = pipeline.data_spec(tconf.data)
  configuration.validate(tconf, spec)
  model = configuration.make_model(tconf, spec, configuration.make_process(tconf, spec))
  checkpoints.write_config(workdir, tconf)
  if not checkpoint:
    return model
  state = train_step.init_state(
    train_step.init_params(model, 0), train_step.make_optimizer(tconf.optim, 1)
  )
  mngr = checkpoints.checkpoint_manager(os.path.join(workdir, "checkpoints"))
  checkpoints.save(mngr, state, {"signature": configuration.model_signature(tconf, spec)})
  mngr.wait_until_finished()
  mngr.close()
  return model


@pytest.mark.parametrize("name", DISTILL_NAMES)
def test_distill_config_resolves_validates_and_fits_together(name, tmp_path):
  """`STEPPED` configs take one Di4C step from a teacher checkpoint; the others are traced."""
  stepped = name in STEPPED
  config = load(name)
  t_model = None
  if config.teacher.kind == "network":
    tconf = _small(_data_source(name), tmp_path)
    t_model = _teacher_run(tconf, str(tmp_path / "teacher"), checkpoint=stepped)
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
  model = configuration.make_model(config, spec, process, latent=True)
  if stepped or t_model is None:
    teacher = distill.load_teacher(config, spec, process)
  else:  # the network teacher as load_teacher builds it, its weights abstract
    abstract = jax.eval_shape(lambda: train_step.init_params(t_model, 0))
    teacher = di4c.network_teacher(t_model, abstract, config.teacher.latent_nodes)
  teacher_params = teacher.frozen if config.teacher.kind == "network" else None
  loss_fn = di4c.student_loss(model, teacher, process, config.distill, config.model.label_dropout)
  opt = train_step.make_optimizer(config.optim, config.train.num_steps)
  step = train_step.make_step(loss_fn, opt, config.optim.ema_decay)
  rng = np.random.default_rng(0)
  batch = {
    "tokens": rng.integers(0, spec.vocab_size, (2, spec.length)).astype(np.int32),
    "labels": rng.integers(0, max(spec.num_classes, 1), 2).astype(np.int32),
  }
  init = lambda p: train_step.init_state(di4c.initial_student(model, config.distill, 0, p), opt)
  if not stepped:
    # The teacher's weights copied into the student, and a whole step, as shapes only.
    state = jax.eval_shape(init, teacher_params)
    new_state, metrics = jax.eval_shape(step, state, batch, jax.random.key(0), teacher.frozen)
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
    assert shapes(new_state.params) == shapes(state.params)
    assert {"loss", "grad_norm"} <= set(metrics) and metrics["loss"].shape == (), metrics
    return
  state, metrics = _run(
    jax.jit(step), init(teacher_params), batch, jax.random.key(0), teacher.frozen
  )
  metrics = jax.device_get(metrics)
  assert int(state.step) == 1
  for k, v in metrics.items():
    assert np.all(np.isfinite(v)), f"{name}: {k} = {v}"
  assert float(metrics["loss"]) > 0.0 and float(metrics["grad_norm"]) > 0.0, metrics


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_teacher_config_takes_one_train_step(name, tmp_path):
  config = load(name)
  if not _is_teacher(config):
    pytest.skip("distillation config: covered by the distillation tests")
  config = _small(config, tmp_path)
  data_name = config.data.name
  if data_name in pipeline.TFDS_CATALOG:
    # Fake examples with the real feature spec through the ordinary TFDS path.
    with tfds.testing.mock_data(num_examples=4 * BATCH, policy=tfds.testing.MockPolicy.USE_CODE):
      setup = teacher_training.setup_teacher(config)
    assert setup.spec == _unprepared_spec(config)
  elif data_name in pipeline.OWN_DOWNLOAD:
    with pytest.raises(ValueError, match="not prepared.*prepare"):
      pipeline.load(config.data, "train")
    setup = _teacher_from_random_tokens(config, _unprepared_spec(config), np.random.default_rng(0))
  else:
    setup = teacher_training.setup_teacher(config)
  _one_step(config, setup)


@pytest.mark.parametrize("name,min_params", sorted(FULL_SIZE.items()))
def test_full_size_configs_have_realistic_parameter_counts(name, min_params):
  config = load(name)
  spec = _unprepared_spec(config)
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  model = configuration.make_model(config, spec, process)
  # Shapes only: no 100M-parameter initialisation on the CPU.
  shapes = jax.eval_shape(lambda: train_step.init_params(model, 0))
  n = networks.count_params(shapes)
  assert min_params < n < 500e6, f"{name}: {n:,} parameters"
  assert networks.flops_per_example(model) > 1e10  # an accelerator-sized model
