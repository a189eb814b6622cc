"""Teacher training: sharding parity, resume, losses, checkpoints, config errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_dd import (
  checkpoints,
  configuration,
  denoisers,
  exact,
  losses,
  processes,
  sharding,
  teacher_training,
  train_step,
  trainer,
)
from mixture_dd.configs import tiny as tiny_cfg
from mixture_dd.data import pipeline


def small_config(tmp_path, **train_overrides):
  c = tiny_cfg.get_config()
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.num_train, c.data.num_test = 2000, 200
  c.model.update(width=32, depth=1, heads=2)
  c.train.update(batch_size=64, num_steps=12, log_every=4, ckpt_every=4, sample_every=0)
  c.train.update(train_overrides)
  return c


def _leaves_equal(a, b, atol=0.0):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_sharded_step_matches_single_device(tmp_path):
  assert jax.device_count() == 8, "conftest should give 8 CPU devices"
  c = small_config(tmp_path)
  setup = teacher_training.setup_teacher(c)
  source, model, loss_fn = setup.source, setup.model, setup.loss_fn
  opt = train_step.make_optimizer(c.optim, 10)
  step_fn = train_step.make_step(loss_fn, opt, c.optim.ema_decay)
  batcher = pipeline.Batcher(source.tokens, source.labels, 64, seed=0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh(
      (len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )
    state = sharding.replicate(train_step.init_state(train_step.init_params(model, 0), opt), mesh)
    jstep = sharding.shard_step(step_fn, mesh)
    losses_seen = []
    for i in range(3):
      state, m = jstep(
        state, sharding.global_batch(mesh, batcher.batch(i)), jax.random.key(i), None
      )
      losses_seen.append(float(m["loss"]))
    results.append((losses_seen, jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  _leaves_equal(results[0][1], results[1][1], atol=1e-5)


def test_kill_and_resume_gives_identical_parameters(tmp_path):
  c = small_config(tmp_path)
  straight = teacher_training.train_teacher(c, str(tmp_path / "a"))
  half = small_config(tmp_path, num_steps=6, ckpt_every=3)
  teacher_training.train_teacher(half, str(tmp_path / "b"))
  c2 = small_config(tmp_path)
  resumed = teacher_training.train_teacher(c2, str(tmp_path / "b"))
  assert int(resumed.step) == int(straight.step) == 12
  _leaves_equal(straight.params, resumed.params)
  _leaves_equal(straight.ema_params, resumed.ema_params)
  _leaves_equal(straight.opt_state, resumed.opt_state)


def test_incompatible_checkpoint_names_the_fields(tmp_path):
  c = small_config(tmp_path, num_steps=2, ckpt_every=2)
  teacher_training.train_teacher(c, str(tmp_path / "w"))
  c.model.width = 64
  with pytest.raises(checkpoints.IncompatibleCheckpoint, match="model.width"):
    teacher_training.train_teacher(c, str(tmp_path / "w"))


def test_nan_stops_with_step_and_term_and_is_not_saved(tmp_path):
  c = small_config(tmp_path, num_steps=8, ckpt_every=2, log_every=8)
  setup = teacher_training.setup_teacher(c)
  source, model, loss_fn = setup.source, setup.model, setup.loss_fn

  def bad_loss(params, batch, key, frozen=None):
    loss, m = loss_fn(params, batch, key)
    poison = jnp.where(m["loss"] > -1, jnp.nan, 0.0)  # always NaN, traced
    return loss, dict(m, consistency=poison)

  opt = train_step.make_optimizer(c.optim, 8)
  params = train_step.init_params(model, 0)
  task = trainer.Task(
    desc="nan",
    loss_fn=bad_loss,
    params=params,
    batcher=pipeline.Batcher(source.tokens, source.labels, 64, seed=0),
    signature={},
    meta={},
    spec=setup.spec,
  )
  loop = trainer.LoopConfig(
    workdir=str(tmp_path / "nan"), num_steps=8, seed=0, log_every=8, ckpt_every=2
  )
  with pytest.raises(trainer.NonFiniteError, match=r"step 1 .*consistency"):
    trainer.fit(
      task, loop, train_step.init_state(params, opt), train_step.make_step(bad_loss, opt, 0.9)
    )
  ckpts = tmp_path / "nan" / "checkpoints"
  assert not ckpts.exists() or not [p for p in os.listdir(ckpts) if p.isdigit()]


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("process.vocab_size", 2, "process.vocab_size.*smaller than the data"),
    ("process.name", "gaussain", "process.name"),
    ("model.length", 7, "model.length"),
    ("optim.lr", -1.0, "optim.lr"),
    ("train.num_steps", 0, "train.num_steps"),
    ("model.heads", 5, "model.width"),
  ],
)
def test_bad_config_fails_at_start_naming_the_field(tmp_path, field, value, match):
  c = small_config(tmp_path)
  sec, name = field.split(".")
  c[sec][name] = value
  with pytest.raises(ValueError, match=match):
    teacher_training.train_teacher(c, str(tmp_path / "bad"))
  assert not (tmp_path / "bad" / "checkpoints").exists()


def test_unknown_data_field_is_named():
  with pytest.raises(ValueError, match="lenght"):
    configuration.data_config("markov", lenght=3)


def test_masked_elbo_weight_closed_forms():
  t = jnp.array([0.1, 0.5, 0.9])
  np.testing.assert_allclose(
    losses.masked_elbo_weight(processes.Masked(3, "linear"), t), 1 / t, rtol=1e-5
  )
  np.testing.assert_allclose(
    losses.masked_elbo_weight(processes.Masked(3, "loglinear"), t), 1 / t, rtol=1e-4
  )
  # cosine: alpha = 1 - cos(pi/2 (1-t)) -> -alpha' / (1-alpha) = (pi/2) tan(pi/2 (1-t))
  np.testing.assert_allclose(
    losses.masked_elbo_weight(processes.Masked(3, "cosine"), t),
    np.pi / 2 * np.tan(np.pi / 2 * (1 - np.asarray(t))),
    rtol=1e-4,
  )


def test_masked_elbo_of_the_ideal_denoiser_is_the_entropy():
  """At the optimum the masked ELBO is tight: E[loss] = H(data) / D exactly."""
  s_vocab, length = 3, 3
  probs = exact.make_family("dirichlet", s_vocab, length, seed=0)
  entropy = -np.sum(probs * np.log(probs)) / length
  proc = processes.Masked(s_vocab, "linear")
  states = exact.enumerate_states(s_vocab, length)
  fn = denoisers.ideal(proc, length)

  @jax.jit
  def batch_loss(key):
    k_data, k_loss = jax.random.split(key)
    idx = jax.random.choice(k_data, len(probs), (512,), p=jnp.asarray(probs))
    return losses.teacher_loss(fn, jnp.asarray(probs), proc, jnp.asarray(states)[idx], k_loss)[0]

  vals = np.array([float(batch_loss(jax.random.key(i))) for i in range(200)])
  se = vals.std(ddof=1) / np.sqrt(len(vals))
  assert abs(vals.mean() - entropy) < 4 * se, (vals.mean(), entropy, se)


def test_uniform_xent_of_flat_logits_is_log_s():
  proc = processes.Uniform(5, "linear")
  fn = denoisers.from_function(lambda p, x, t: jnp.zeros(x.shape + (5,)))
  loss, m = losses.teacher_loss(fn, None, proc, jnp.zeros((8, 4), jnp.int32), jax.random.key(0))
  np.testing.assert_allclose(loss, np.log(5), rtol=1e-6)
  assert "xent_per_token" in m


def test_stratified_times_cover_the_interval():
  t = np.sort(np.asarray(losses.stratified_times(jax.random.key(0), 100, 0.01, 1.0)))
  assert t.min() >= 0.01 and t.max() <= 1.0
  np.testing.assert_allclose(np.diff(t), 0.99 / 100, atol=1e-5)


def test_ema_warmup_follows_tauldr():
  d = np.asarray([float(train_step.ema_decay_at(n, 0.9999)) for n in (0, 1, 10, 100, 10**6)])
  np.testing.assert_allclose(d, [1 / 10, 2 / 11, 11 / 20, 101 / 110, 0.9999], rtol=1e-6)
  assert float(train_step.ema_decay_at(5, 0.9, warmup=False)) == pytest.approx(0.9)
  # After 5000 steps a warmed-up 0.9999 EMA holds a negligible share of the start.
  share = np.prod(np.asarray(train_step.ema_decay_at(np.arange(5000), 0.9999), np.float64))
  assert share < 1e-3 and 0.9999**5000 > 0.6
