"""The official Di4C recipe's easy-to-miss defaults, as our presets and configs carry them.

Read in sony/di4c: the correlation (data) term is on in every default run (MaskGIT and SDTT
with alpha = 0.1 sigmoid); a student trains at its teacher's dropout; MaskGIT's training-time
Gumbel temperature is 4.5 (1 - r T / (T - 1)) with T = 8 teacher steps; a di4c^2 teacher and
the next round's start are the weights the previous round evaluates (raw for SDTT).
"""

import importlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mixture_dd import (
  checkpoints,
  configuration,
  di4c,
  distill,
  processes,
  runs,
  samplers,
  train_step,
)
from mixture_dd.data import pipeline


def load(name, *args):
  return importlib.import_module("mixture_dd.configs." + name).get_config(*args)


# ---------------------------------------------------------------------------
# 1. The correlation term is on, with the official alpha_t.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,scale",
  [("maskgit_distill", 0.1), ("text8_sdtt_distill", 0.1), ("cifar10_tauldr_distill", 1.0)],
)
def test_full_size_presets_train_di4c_d_with_the_official_alpha(name, scale):
  d = load(name).distill
  assert d.data_weight == 1.0, f"{name}: the official default run is di4c-d"
  assert d.alpha_scale == scale
  # alpha_t = scale * sigmoid(20 (t - 0.5)) (MaskGIT's sigmoid(20 (0.5 - r)) at r = 1 - t).
  # Several keys: SDTT draws one t per batch.
  tms = [di4c.sample_times(jax.random.key(i), 64, d) for i in range(16)]
  t = np.concatenate([np.asarray(tm["t"], np.float64) for tm in tms])
  alpha = np.concatenate([np.asarray(tm["alpha"]) for tm in tms])
  np.testing.assert_allclose(alpha, scale / (1.0 + np.exp(-20.0 * (t - 0.5))), rtol=1e-5, atol=1e-7)
  assert t.min() < 0.3 and t.max() > 0.7  # both ends of the sigmoid were checked


# ---------------------------------------------------------------------------
# 2. The student's dropout is its teacher's.
# ---------------------------------------------------------------------------


def _teacher_dir(tmp_path, tconf, name="teacher"):
  """A workdir with only the config.json `runs.resolve` reads."""
  workdir = tmp_path / name
  workdir.mkdir()
  (workdir / "config.json").write_text(tconf.to_json_best_effort())
  return str(workdir)


# Every distillation config of ours with a network teacher, and that teacher's config file.
PAIRS = [
  ("digits_distill", "digits"),
  ("digits_gaussian_distill", "digits_gaussian"),
  ("markov_distill", "markov"),
  ("pydoc_text_distill", "pydoc_text"),
  ("cifar10_tauldr_distill", "cifar10_gaussian"),
  ("text8_sdtt_distill", "text8_masked"),
  ("maskgit_distill", "maskgit"),
]


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_each_student_config_trains_at_its_teacher_config_dropout(student, teacher, tmp_path):
  tconf = load(teacher)
  config = load(student)
  config.teacher.workdir = _teacher_dir(tmp_path, tconf)
  resolved = runs.resolve(config)
  assert resolved.model.dropout == tconf.model.dropout
  assert resolved.model.label_dropout == tconf.model.label_dropout


def test_official_pixel_teacher_and_student_both_train_at_dropout_0_1(tmp_path):
  tconf = load("cifar10_gaussian")
  assert tconf.model.dropout == 0.1
  config = load("cifar10_tauldr_distill")
  config.teacher.workdir = _teacher_dir(tmp_path, tconf)
  assert runs.resolve(config).model.dropout == 0.1


def test_student_dropout_defaults_to_the_teacher_and_a_different_one_is_refused(tmp_path):
  tconf = load("digits", "ci")
  tconf.model.dropout = 0.3
  config = load("digits_distill", "ci")
  config.teacher.workdir = _teacher_dir(tmp_path, tconf)
  assert runs.resolve(config).model.dropout == 0.3  # unset: the teacher's
  config.model = ml_collections.ConfigDict(dict(dropout=0.3))
  assert runs.resolve(config).model.dropout == 0.3  # the same value is accepted
  config.model.dropout = 0.1
  with pytest.raises(ValueError, match=r"config\.model\.dropout=0\.1 differs .* 0\.3"):
    runs.resolve(config)
  config.model = ml_collections.ConfigDict(dict(label_dropout=0.5))
  with pytest.raises(ValueError, match=r"config\.model\.label_dropout=0\.5"):
    runs.resolve(config)


# ---------------------------------------------------------------------------
# 3. MaskGIT's training-time Gumbel temperature.
# ---------------------------------------------------------------------------


def test_confidence_temperature_is_the_samplers_at_each_step_start():
  d = configuration.distill_preset("maskgit")
  assert d.confidence_steps == 8 and d.confidence_temperature == 4.5
  big_t = d.confidence_steps
  # The sampler's step k starts at progress r = k / T with temperature 4.5 (1 - k / (T - 1)).
  r = np.arange(big_t) / big_t
  got = np.asarray(di4c.confidence_step_temperature(d, jnp.asarray(1.0 - r, jnp.float32)))
  np.testing.assert_allclose(got, 4.5 * (1.0 - np.arange(big_t) / (big_t - 1)), atol=1e-5)
  # In between it is the official linear ramp 4.5 (1 - r T / (T - 1)), below 4.5 (1 - r).
  r = np.array([0.1, 0.3, 0.5, 0.8])
  got = np.asarray(di4c.confidence_step_temperature(d, jnp.asarray(1.0 - r, jnp.float32)))
  np.testing.assert_allclose(got, 4.5 * (1.0 - r * 8 / 7), rtol=1e-5)
  assert np.all(got < 4.5 * (1.0 - r) - 0.05)
  # Above r = 7/8 the official ramp goes negative; ours stops at the sampler's last value, 0.
  r = np.array([0.88, 0.9, 0.95, 1.0])
  got = np.asarray(di4c.confidence_step_temperature(d, jnp.asarray(1.0 - r, jnp.float32)))
  np.testing.assert_array_equal(got, 0.0)


def test_confidence_teacher_step_needs_its_step_count():
  with pytest.raises(ValueError, match="confidence_steps"):
    configuration.validate_distill(configuration.distill_preset("maskgit", confidence_steps=1))


def test_di4c_loss_steps_the_teacher_at_the_ramped_temperature(monkeypatch):
  """The loss hands the confidence step 4.5 (1 - r 8/7) per latent copy, not 4.5 (1 - r)."""
  s, length, b, num_l = 3, 4, 5, 2
  proc = processes.Masked(s, "arccos")
  d = configuration.distill_preset("maskgit", num_latents=num_l)
  t = jnp.array([0.2, 0.4, 0.6, 0.9, 1.0])  # r = 0.8, 0.6, 0.4, 0.1, 0.0
  orig_times = di4c.sample_times
  monkeypatch.setattr(
    di4c,
    "sample_times",
    lambda key, b_, d_: dict(orig_times(key, b_, d_), t=t, u=jnp.maximum(t - 0.05, 0.0)),
  )
  seen = []
  orig_step = samplers.confidence_step

  def spy(key, process, x, logits, n_after, temperature):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), temperature)
    return orig_step(key, process, x, logits, n_after, temperature)

  monkeypatch.setattr(samplers, "confidence_step", spy)

  def net(params, x, t_, key, lam=None, labels=None):
    return jnp.zeros(x.shape + (s + 1,)) + params

  teacher = di4c.Teacher(net, jnp.zeros(()), "flat")
  loss_fn = di4c.di4c_loss(net, teacher, proc, d)
  batch = {"tokens": jnp.zeros((b, length), jnp.int32)}
  loss, _ = jax.jit(loss_fn)(jnp.zeros(()), batch, jax.random.key(0), teacher.frozen)
  assert np.isfinite(float(loss))
  (temp,) = seen
  r = 1.0 - np.repeat(np.asarray(t), num_l)
  np.testing.assert_allclose(np.asarray(temp), 4.5 * np.maximum(1.0 - r * 8 / 7, 0.0), atol=1e-5)


# ---------------------------------------------------------------------------
# 4. di4c^2: the next round's teacher and start are the weights the round evaluates.
# ---------------------------------------------------------------------------


def _round_one_student(tmp_path, eval_weights):
  """A finished round-one student workdir whose raw and EMA weights differ by 1."""
  c = configuration.distill_base_config("sdtt")
  c.teacher.kind = "ideal"
  c.data = configuration.data_config(
    "tiny", family="dirichlet", vocab_size=3, length=3, seed=0, num_train=64, num_test=16
  )
  c.process = ml_collections.ConfigDict(dict(name="masked", vocab_size=None, schedule="linear"))
  c.model = configuration.base_config().model
  c.model.update(width=16, depth=1, heads=2, positions="learned")
  c.train.eval_weights = eval_weights
  c.is_student = True
  spec = pipeline.data_spec(c.data)
  process = configuration.make_process(c, spec)
  model = configuration.make_model(c, spec, process, latent=True)
  state = train_step.init_state(
    train_step.init_params(model, 0), train_step.make_optimizer(c.optim, 1)
  )
  state = state.replace(ema_params=jax.tree.map(lambda a: a + 1.0, state.params))
  workdir = str(tmp_path / f"round1_{eval_weights}")
  checkpoints.write_config(workdir, c)
  mngr = checkpoints.checkpoint_manager(os.path.join(workdir, "checkpoints"))
  checkpoints.save(mngr, state, {"signature": configuration.model_signature(c, spec)})
  mngr.wait_until_finished()
  mngr.close()
  return workdir, state


@pytest.mark.parametrize("eval_weights", ["raw", "ema"])
def test_second_round_teacher_and_start_are_the_evaluated_weights(tmp_path, eval_weights):
  workdir, state = _round_one_student(tmp_path, eval_weights)
  want = state.params if eval_weights == "raw" else state.ema_params
  config = configuration.distill_base_config("sdtt")
  config.teacher.update(kind="network", workdir=workdir, latent_nodes=4)
  config.distill.num_latents = 4
  config.train.update(batch_size=4)
  setup = distill.setup_student(config)
  assert setup.teacher.component is not None  # a mixture teacher
  for got in (setup.teacher.frozen, setup.params):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert json.loads(json.dumps(setup.teacher.provenance))["checksum"] == checkpoints.checksum(want)


# ---------------------------------------------------------------------------
# Renamed config fields: refused in a config being set up, read in a run on disk.
# ---------------------------------------------------------------------------


def test_a_renamed_field_is_refused_naming_the_new_one():
  c = configuration.distill_base_config()
  c.teacher.num_latents = 4  # teacher.latent_nodes' old name
  with pytest.raises(ValueError, match=r"set config.teacher.latent_nodes instead"):
    configuration.check_renamed(c)
  c = configuration.distill_base_config()
  c.distill.distil_threshold = 0.1  # distill_threshold's old name
  with pytest.raises(ValueError, match=r"set config.distill.distill_threshold instead"):
    configuration.check_renamed(c)


def test_a_run_written_before_the_renames_reads_with_the_new_names(tmp_path):
  old = configuration.distill_base_config().to_dict()
  old["teacher"]["num_latents"] = old["teacher"].pop("latent_nodes") + 1
  old["distill"]["distil_weight"] = old["distill"].pop("distill_weight") + 2.0
  (tmp_path / "config.json").write_text(json.dumps(old))
  c = runs.read_run_config(str(tmp_path))
  assert c.teacher.latent_nodes == 17 and "num_latents" not in c.teacher
  assert c.distill.distill_weight == 3.0 and "distil_weight" not in c.distill
  configuration.check_renamed(c)
