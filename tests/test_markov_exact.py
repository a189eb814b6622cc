"""The exact ideal teacher of the Markov chain (markov_exact.py) and its wiring.

Forward-backward posteriors against float64 brute force over all S^D
sequences (tiny chains) and against closed forms on the real chain (S = 8,
D = 32); the teacher in a distillation run (configs/markov_exact_distill.py)
and in evaluation (runs.ideal_run).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from scipy import stats

from mixture_dd import (
  checkpoints,
  configuration,
  denoisers,
  di4c,
  distill,
  evaluate,
  exact,
  markov_exact,
  processes,
  runs,
  scorers,
  train_step,
)
from mixture_dd.configs import markov_exact_distill
from mixture_dd.data import markov, pipeline
from tests.conftest import chi2_stat


def _uniform(s, schedule="linear"):
  return processes.make_process(
    ml_collections.ConfigDict(dict(name="uniform", vocab_size=s, schedule=schedule))
  )


def _emission64(process, x_t, t, s):
  """float64 q_{t|0}(x_t^d | x0^d = a) `[B, D, S]` under the linear schedule
  (alpha_t = 1 - t), written out per process."""
  assert process.schedule == "linear"
  alpha = 1.0 - t
  same = x_t[..., None] == np.arange(s)
  if process.name == "masked":
    return np.where(x_t[..., None] == s, 1.0 - alpha, alpha * same)
  if process.name == "uniform":
    return alpha * same + (1.0 - alpha) / s
  raise AssertionError(process.name)


def _brute_force(init, trans, x_t, emission):
  """float64 posterior marginals `[B, D, S]` by enumerating every x0 in S^D."""
  s, length = len(init), x_t.shape[1]
  states = exact.enumerate_states(s, length)  # [M, D]
  prior = init[states[:, 0]] * np.prod(trans[states[:, :-1], states[:, 1:]], axis=-1)  # [M]
  out = np.zeros(x_t.shape + (s,))
  for b in range(len(x_t)):
    w = prior * np.prod(emission[b, np.arange(length), states], axis=-1)
    if w.sum() == 0:  # an x_t no sequence can produce (masked process at t = 1)
      continue
    w = w / w.sum()
    for d in range(length):
      out[b, d] = np.bincount(states[:, d], weights=w, minlength=s)
  return out


def _posterior(process, init, trans, x_t, t):
  params = markov_exact.chain_params(init, trans)
  fn = jax.jit(lambda p, x, t: markov_exact.ideal_log_marginals(process, p, x, t))
  return np.exp(np.asarray(fn(params, jnp.asarray(x_t, jnp.int32), t), np.float64))


def _masked_inputs(rng, init, trans, n, length):
  """Random masks over chain samples, plus an all-masked and a none-masked row."""
  s = len(init)
  x0 = markov.sample(rng, n, length, init, trans)
  x_t = np.where(rng.random((n, length)) < 0.5, s, x0)
  x_t[0] = s
  x_t[1] = x0[1]
  return x_t.astype(np.int32)


@pytest.mark.parametrize("s,length,seed", [(3, 5, 0), (4, 4, 1), (2, 7, 2), (5, 1, 3), (3, 2, 4)])
def test_masked_posterior_is_brute_force_bayes(s, length, seed):
  """Every t gives the same posterior: only which tokens are masked matters,
  and a kept token is one-hot even at t = 1 (where alpha_1 = 0 under the
  linear schedule, so the reference conditions on the values directly).
  One time per example, the same inputs at t = 0, 0.3, 0.5 and 1."""
  rng = np.random.default_rng(seed)
  init, trans = markov.make_chain(s, seed)
  proc = processes.Masked(s, "linear")
  x_t = _masked_inputs(rng, init, trans, 8, length)
  ref = _brute_force(init, trans, x_t, _emission64(proc, x_t, 0.5, s))
  ts = np.repeat(np.array([0.0, 0.3, 0.5, 1.0], np.float32), len(x_t))
  got = _posterior(proc, init, trans, np.tile(x_t, (4, 1)), ts)
  np.testing.assert_allclose(got, np.tile(ref, (4, 1, 1)), atol=2e-6)
  # A kept token is one-hot on its value.
  kept = x_t < s
  np.testing.assert_allclose(ref[kept, x_t[kept]], 1.0, atol=1e-12)


def test_uniform_posterior_is_brute_force_bayes():
  """The emissions come from the process's own transition matrix: the
  uniform process (every token noisy, none certain) is exact too."""
  s, length = 3, 5
  rng = np.random.default_rng(5)
  init, trans = markov.make_chain(s, 5)
  proc = _uniform(s)
  x_t = rng.integers(0, s, (8, length)).astype(np.int32)
  times = (0.1, 0.5, 0.9)
  ref = [_brute_force(init, trans, x_t, _emission64(proc, x_t, t, s)) for t in times]
  ts = np.repeat(np.array(times, np.float32), len(x_t))
  got = _posterior(proc, init, trans, np.tile(x_t, (3, 1)), ts)
  np.testing.assert_allclose(got, np.concatenate(ref), atol=2e-6)


@pytest.mark.parametrize("name", ["masked", "uniform"])
def test_posterior_total_correlation_is_brute_force(name):
  """Averaged over the exact posterior (every x0 in S^D, weighted), the one-draw estimator is the
  posterior's total correlation sum_d H(marginal_d) - H(joint), enumerated in float64; 0 for a
  fully observed row."""
  s, length = 3, 5
  rng = np.random.default_rng(6)
  init, trans = markov.make_chain(s, 6)
  proc = processes.Masked(s, "linear") if name == "masked" else _uniform(s)
  t = 0.6
  if name == "masked":
    x_t = _masked_inputs(rng, init, trans, 6, length)
  else:
    x_t = rng.integers(0, s, (6, length)).astype(np.int32)
  states = exact.enumerate_states(s, length)  # [M, D]
  prior = init[states[:, 0]] * np.prod(trans[states[:, :-1], states[:, 1:]], axis=-1)
  emission = _emission64(proc, x_t, t, s)
  params = markov_exact.chain_params(init, trans)
  fn = jax.jit(lambda x, x0: markov_exact.posterior_total_correlation(proc, params, x, t, x0))
  tcs = []
  for b in range(len(x_t)):
    w = prior * np.prod(emission[b, np.arange(length), states], axis=-1)
    w = w / w.sum()
    marg = np.stack([np.bincount(states[:, d], weights=w, minlength=s) for d in range(length)])
    h = lambda p: -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0))
    tc = h(marg) - h(w)
    est = np.asarray(fn(jnp.asarray(np.tile(x_t[b], (len(states), 1))), jnp.asarray(states)))
    keep = w > 0  # a draw of the posterior is never an impossible sequence
    got = np.sum(w[keep] * est[keep].astype(np.float64))
    np.testing.assert_allclose(got, tc, atol=2e-4)
    tcs.append(tc)
  if name == "masked":  # row 1 has nothing masked: one sequence, no correlation
    assert abs(tcs[1]) < 1e-12
  assert max(tcs) > 0.1  # the reference is not trivially 0


@pytest.mark.parametrize("name", ["masked", "uniform"])
def test_agrees_with_the_enumerating_ideal_denoiser(name):
  """Same law, two algorithms: forward-backward and exact.ideal_log_marginals."""
  s, length = 3, 4
  init, trans = markov.make_chain(s, 7)
  states = exact.enumerate_states(s, length)
  probs = init[states[:, 0]] * np.prod(trans[states[:, :-1], states[:, 1:]], axis=-1)
  proc = processes.Masked(s, "linear") if name == "masked" else _uniform(s)
  rng = np.random.default_rng(7)
  x_t = (
    _masked_inputs(rng, init, trans, 6, length)
    if name == "masked"
    else rng.integers(0, s, (6, length)).astype(np.int32)
  )
  enum = np.exp(np.asarray(exact.ideal_log_marginals(proc, probs, length, x_t, 0.4), np.float64))
  np.testing.assert_allclose(_posterior(proc, init, trans, x_t, 0.4), enum, atol=2e-6)


def test_real_chain_posteriors_match_closed_forms():
  """S = 8, D = 32 (no enumeration possible). All masked: the marginals
  init @ trans^d. Positions 10 and 12 observed (a, c), the rest masked:
  x_11 ∝ trans[a, .] trans[., c]; x_14 = (trans^2)[c, .];
  x_5 ∝ marginal_5(.) (trans^5)[., a] (the Markov property)."""
  s, length = 8, 32
  init, trans = markov.make_chain(s, 0)
  proc = processes.Masked(s)
  marg = markov.marginals(init, trans, length)
  a, c = 3, 5
  x_t = np.full((2, length), s, np.int32)
  x_t[1, 10], x_t[1, 12] = a, c
  got = _posterior(proc, init, trans, x_t, 0.7)
  np.testing.assert_allclose(got[0], marg, atol=1e-5)
  mid = trans[a] * trans[:, c]
  np.testing.assert_allclose(got[1, 11], mid / mid.sum(), atol=1e-5)
  np.testing.assert_allclose(got[1, 14], np.linalg.matrix_power(trans, 2)[c], atol=1e-5)
  back = marg[5] * np.linalg.matrix_power(trans, 5)[:, a]
  np.testing.assert_allclose(got[1, 5], back / back.sum(), atol=1e-5)
  np.testing.assert_allclose(got[1, 10], np.eye(s)[a], atol=1e-6)


def test_marginals_closed_form_is_the_enumerated_law():
  s, length = 3, 4
  init, trans = markov.make_chain(s, 2)
  states = exact.enumerate_states(s, length)
  probs = init[states[:, 0]] * np.prod(trans[states[:, :-1], states[:, 1:]], axis=-1)
  enum = [np.bincount(states[:, d], weights=probs, minlength=s) for d in range(length)]
  np.testing.assert_allclose(markov.marginals(init, trans, length), enum, atol=1e-12)


def test_one_step_exact_sampler_law_is_the_product_of_chain_marginals():
  """The whole law of the 1-step sampler (pushed through exactly): prod_d
  (init @ trans^d)[x^d]; and more steps only get closer to the chain."""
  s, length = 3, 4
  init, trans = markov.make_chain(s, 1)
  proc = processes.Masked(s, "loglinear")
  teacher = di4c.chain_teacher(proc, init, trans)
  view = denoisers.exact_view(teacher.denoise, teacher.frozen, proc.num_states**length)
  states = exact.enumerate_states(s, length)
  marg = markov.marginals(init, trans, length)
  product = np.prod(marg[np.arange(length), states], axis=-1)
  law = scorers.exact_law(proc, length, 1, (view, False))
  np.testing.assert_allclose(law, product, atol=1e-6)
  probs = init[states[:, 0]] * np.prod(trans[states[:, :-1], states[:, 1:]], axis=-1)
  tvs = [
    exact.total_variation(probs, scorers.exact_law(proc, length, n, (view, False)))
    for n in (1, 4, 16)
  ]
  assert tvs[0] > tvs[1] > tvs[2], tvs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One small markov data set for the tests below (built on first use)."""
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, **teacher):
  c = markov_exact_distill.get_config()
  c.data.update(data_dir=data_dir, num_train=64, num_test=64)
  c.model.update(width=32, depth=1, heads=2)
  c.teacher.update(teacher)
  c.distill.num_latents = 2
  c.train.batch_size = 4
  return c


def test_evaluation_scores_the_exact_teacher_and_its_one_step_law(data_dir, tmp_path):
  """runs.ideal_run through evaluate.evaluate (the markov scorer), and its
  1-step samples against the product of the chain's marginals: the sum of
  the 32 per-position Pearson statistics is chi-square (positions are
  independent under the product law). Over sampling seeds 0..5 that sum
  was 213, 204, 225, 224, 210, 231 on 224 degrees of freedom (the 1e-3
  threshold is 295). The pair (x_10, x_11) against the chain's pair law
  scored 9789..12383 on 39 cells (threshold: 10 x the 1e-3 quantile, ~700):
  the 1-step sampler is a product, the chain is not.
  """
  run = runs.ideal_run(_config(data_dir))
  assert run.model is None and "forward-backward" in run.describe()
  out = str(tmp_path / "eval")
  res = evaluate.evaluate(run, None, [1], 2048, 0, out, batch_size=2048, latency_reps=1)
  row = res["rows"][0]
  assert row["sampler"] == "teacher" and np.isfinite(row["nll_per_token"])
  with open(os.path.join(out, "results.json")) as f:
    assert "forward-backward" in json.load(f)["runs"]["teacher"]
  tokens = np.load(os.path.join(out, "samples", "teacher_N1_all.npz"))["tokens"]
  init, trans = markov.make_chain(8, run.config.data.seed)
  marg = markov.marginals(init, trans, 32)
  total, dof = 0.0, 0
  for d in range(32):
    stat, cells = chi2_stat(np.bincount(tokens[:, d], minlength=8), marg[d])
    total, dof = total + stat, dof + cells - 1
  assert total < stats.chi2.ppf(1 - 1e-3, dof), (total, dof)
  # The 1-step sampler is a product: consecutive tokens are not the chain's pairs.
  pair = np.bincount(tokens[:, 10] * 8 + tokens[:, 11], minlength=64)
  stat, cells = chi2_stat(pair, (marg[10][:, None] * trans).reshape(-1))
  assert stat > 10 * stats.chi2.ppf(1 - 1e-3, cells - 1), (stat, cells)


def _product_run(config, workdir, schedule=None):
  """A launch.train-style run dir (config.json + one checkpoint), random weights."""
  tconf = configuration.base_config()
  for sec in ("data", "process", "model"):
    tconf[sec] = ml_collections.ConfigDict(config[sec].to_dict())
  if schedule:
    tconf.process.schedule = schedule
  spec = pipeline.data_spec(tconf.data)
  model = configuration.make_model(tconf, spec, configuration.make_process(tconf, spec))
  params = train_step.init_params(model, 7)
  checkpoints.write_config(workdir, tconf)
  state = train_step.init_state(params, train_step.make_optimizer(tconf.optim, 1))
  mngr = checkpoints.checkpoint_manager(os.path.join(workdir, "checkpoints"))
  checkpoints.save(mngr, state, {"signature": configuration.model_signature(tconf, spec)})
  mngr.wait_until_finished()
  mngr.close()
  return params


def test_student_starts_from_init_workdir_and_distils(data_dir, tmp_path):
  """The student copies the run's weights (a fresh init differs), and a few
  production steps (quick_distill) of the config run with finite losses."""
  run_params = _product_run(_config(data_dir), str(tmp_path / "run"))
  config = _config(data_dir, init_workdir=str(tmp_path / "run"))
  setup = distill.setup_student(config)
  assert setup.teacher.provenance == {
    "kind": "ideal",
    "checksum": checkpoints.checksum(markov_exact.chain_params(*markov.make_chain(8, 0))),
  }
  fresh = di4c.initial_student(setup.model, setup.config.distill, 0)
  got, new = traverse_util.flatten_dict(setup.params), traverse_util.flatten_dict(fresh)
  for path, leaf in traverse_util.flatten_dict(run_params).items():
    np.testing.assert_array_equal(got[path], leaf)
  assert any(
    not np.array_equal(new[p], v) for p, v in traverse_util.flatten_dict(run_params).items()
  )
  result = distill.quick_distill(config, num_steps=2, chunk=2)
  assert result.losses.shape[0] == 2 and np.all(np.isfinite(result.losses))


def test_teacher_kind_errors_name_the_fix(data_dir, tmp_path):
  _product_run(_config(data_dir), str(tmp_path / "other"), schedule="linear")
  with pytest.raises(ValueError, match="same data and process"):
    runs.resolve(_config(data_dir, init_workdir=str(tmp_path / "other")))
  c = _config(data_dir)
  c.data = configuration.data_config("digits")
  with pytest.raises(ValueError, match="exact law"):
    runs.resolve(c)
  with pytest.raises(ValueError, match="ideal_run needs"):
    runs.ideal_run(c)
  c = _config(data_dir, kind="network", workdir=str(tmp_path / "other"))
  c.teacher.init_workdir = str(tmp_path / "other")
  with pytest.raises(ValueError, match="init_workdir is for an ideal teacher"):
    runs.resolve(c)


def test_mixture_correlation_benchmark_measures_student_and_posterior(data_dir):
  """benchmarks.mixture_correlation on a fresh (untrained) student: finite rows with standard
  errors; the exact posterior is strongly correlated at t = 1 (a 32-long chain), the student's
  mixture far less, and a student whose components agree (lambda ignored) expresses none."""
  from benchmarks import mixture_correlation

  setup = distill.setup_student(_config(data_dir))
  run = runs.Run(setup.config, setup.spec, setup.process, setup.model, setup.params, True)
  rows = mixture_correlation.measure(run, [1.0, 0.5], 32, 4, 16, 0)
  assert [r["t"] for r in rows] == [1.0, 0.5]
  for r in rows:
    assert all(np.isfinite(v) for v in r.values()), r
  assert rows[0]["posterior_tc"] > 5.0 and rows[0]["posterior_tc"] > 10 * rows[0]["student_tc"]
  assert rows[0]["posterior_tc"] > rows[1]["posterior_tc"] > 0.5  # less left to correlate

  class Flat:  # every latent gets the same lambda: one product
    def __getattr__(self, name):
      return getattr(setup.model, name)

    def apply(self, params, *args, lam=None, **kw):
      return setup.model.apply(params, *args, lam=jnp.zeros_like(lam), **kw)

  flat = runs.Run(setup.config, setup.spec, setup.process, Flat(), setup.params, True)
  rows = mixture_correlation.measure(flat, [1.0], 32, 4, 16, 0)
  assert abs(rows[0]["student_tc"]) < 1e-4 and abs(rows[0]["data_c"]) < 1e-4

  # Local latents (8 blocks of 4) go through the same measurement (scored block by block; a
  # fresh network's zero-initialised modulations leave lambda without effect, so TC ~ 0).
  c = _config(data_dir)
  c.model.update(latent_dim=8, latent_scope="blocks")
  setup = distill.setup_student(c)
  run = runs.Run(setup.config, setup.spec, setup.process, setup.model, setup.params, True)
  (row,) = mixture_correlation.measure(run, [1.0], 32, 4, 16, 0)
  assert all(np.isfinite(v) for v in row.values()) and abs(row["student_tc"]) < 1e-3, row
