"""Forward processes against float64 references and brute-force Bayes."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from ml_collections import ConfigDict

from mixture_dd import processes
from tests.conftest import assert_chi2

TIMES = [(0.0, 0.3), (0.1, 0.5), (0.4, 0.41), (0.25, 0.9), (0.6, 1.0)]


def _alpha64(schedule, t):
  t = np.float64(t)
  return {
      "loglinear": 1 - (1 - 1e-3) * t,
      "linear": 1 - t,
      "cosine": 1 - np.cos(np.pi / 2 * (1 - t)),
      "arccos": 1 - np.arccos(1 - t) / (np.pi / 2),
  }[schedule]


def reference_transition(proc, s, t):
  """float64 q_{t|s} computed independently of the library code."""
  k = proc.num_states
  if isinstance(proc, processes.Masked):
    keep = _alpha64(proc.schedule, t) / _alpha64(proc.schedule, s)
    m = keep * np.eye(k)
    m[:, -1] += 1 - keep
    m[-1] = 0
    m[-1, -1] = 1
    return m
  if isinstance(proc, processes.Uniform):
    keep = _alpha64(proc.schedule, t) / _alpha64(proc.schedule, s)
    return keep * np.eye(k) + (1 - keep) / k
  big_b = lambda u: proc.time_base * (proc.time_exp ** u - 1)
  return scipy.linalg.expm((big_b(t) - big_b(s)) * proc.rate_matrix)


ALL = [processes.Masked(5, schedule=s) for s in processes.SCHEDULES] + [
    processes.Uniform(5, "linear"), processes.Uniform(6, "cosine"),
    processes.GaussianCTMC(8, rate_sigma=2.0, q_sigma=3.0),
    processes.GaussianCTMC(32)]
IDS = [f"{p.name}-{getattr(p, 'schedule', p.vocab_size)}" for p in ALL]


@pytest.mark.parametrize("proc", ALL, ids=IDS)
def test_transition_matches_float64_reference_and_chapman_kolmogorov(proc):
  for s, t in TIMES:
    ref = reference_transition(proc, s, t)
    got = np.asarray(proc.transition(s, t), np.float64)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    assert (got >= 0).all()
    # Chapman-Kolmogorov: q_{t|0} = q_{s|0} q_{t|s}, in float32 and float64.
    ref_ck = reference_transition(proc, 0.0, s) @ ref
    np.testing.assert_allclose(ref_ck, reference_transition(proc, 0.0, t), atol=1e-10)
    ck = np.asarray(proc.transition(0.0, s)) @ np.asarray(proc.transition(s, t))
    np.testing.assert_allclose(ck, reference_transition(proc, 0.0, t), atol=5e-5)


@pytest.mark.parametrize("proc", ALL, ids=IDS)
def test_posterior_is_brute_force_bayes(proc):
  k, sv = proc.num_states, proc.vocab_size
  for s, t in TIMES[:4]:
    q_s0 = reference_transition(proc, 0.0, s)
    q_ts = reference_transition(proc, s, t)
    q_t0 = reference_transition(proc, 0.0, t)
    xt, x0 = np.meshgrid(np.arange(k), np.arange(sv), indexing="ij")
    xt, x0 = xt.reshape(1, -1), x0.reshape(1, -1)
    got = np.exp(np.asarray(proc.log_posterior(jnp.asarray(xt), jnp.asarray(x0), s, t),
                            np.float64))[0]
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    for row, (i, a) in enumerate(zip(xt[0], x0[0])):
      if q_t0[a, i] < 1e-12:
        continue  # x_t impossible given x0: the posterior is not defined
      bayes = np.array([q_ts[b, i] * q_s0[a, b] / q_t0[a, i] for b in range(k)])
      np.testing.assert_allclose(got[row], bayes, atol=2e-4, err_msg=f"x_t={i}, x0={a}")


@pytest.mark.parametrize("schedule", list(processes.SCHEDULES))
def test_masked_posterior_closed_form(schedule):
  proc = processes.Masked(4, schedule=schedule)
  s, t = 0.3, 0.7
  x_t = jnp.array([[4, 4, 2]])
  x0 = jnp.array([[1, 3, 0]])
  p = np.exp(np.asarray(proc.log_posterior(x_t, x0, s, t), np.float64))[0]
  a_s, a_t = _alpha64(schedule, s), _alpha64(schedule, t)
  unmask = (a_s - a_t) / (1 - a_t)
  np.testing.assert_allclose(p[0, 1], unmask, atol=1e-6)
  np.testing.assert_allclose(p[0, 4], 1 - unmask, atol=1e-6)
  np.testing.assert_allclose(p[1, 3], unmask, atol=1e-6)
  np.testing.assert_allclose(p[2], np.eye(5)[2], atol=1e-7)  # unmasked stays


@pytest.mark.parametrize("proc", ALL[:1] + ALL[4:5] + ALL[6:7], ids=["masked", "uniform", "gauss"])
def test_per_example_times_match_scalar_times(proc):
  x0 = jnp.array([[0, 1, 2], [3, 4, 0]])
  x_t = jnp.array([[0, 2, proc.num_states - 1], [3, 1, 0]])
  ts = jnp.array([0.3, 0.8])
  ss = jnp.array([0.1, 0.5])
  lq = proc.log_q_t0(x0, ts)
  lp = proc.log_posterior(x_t, x0, ss, ts)
  chex.assert_shape(lq, (2, 3, proc.num_states))
  chex.assert_shape(lp, (2, 3, proc.num_states))
  for b in range(2):
    np.testing.assert_allclose(lq[b], proc.log_q_t0(x0[b:b + 1], ts[b])[0], atol=1e-5)
    np.testing.assert_allclose(lp[b], proc.log_posterior(x_t[b:b + 1], x0[b:b + 1], ss[b], ts[b])[0],
                               atol=1e-5)
  np.testing.assert_allclose(np.exp(lq[0]), np.asarray(proc.transition(0.0, 0.3))[x0[0]], atol=1e-6)


@pytest.mark.parametrize("proc", [ALL[0], ALL[4], ALL[6]], ids=["masked", "uniform", "gauss"])
def test_sample_xt_frequencies(proc):
  n = 20000
  x0 = jnp.full((n, 1), 2, jnp.int32)
  x_t = np.asarray(proc.sample_xt(jax.random.key(0), x0, 0.6))
  chex.assert_type(x_t, np.int32)
  counts = np.bincount(x_t.ravel(), minlength=proc.num_states)
  assert_chi2(counts, np.asarray(proc.transition(0.0, 0.6))[2])


def test_prior_is_the_t1_marginal_or_stationary_law():
  m = processes.Masked(5, "linear")
  np.testing.assert_allclose(np.exp(m.log_prior()), np.asarray(m.transition(0.0, 1.0))[0], atol=1e-6)
  assert (np.asarray(m.prior_sample(jax.random.key(0), (2, 3))) == 5).all()
  g = processes.GaussianCTMC(16)
  # After B(1) = 297 units of rate the chain has forgotten its start.
  np.testing.assert_allclose(np.asarray(g.transition(0.0, 1.0)), np.exp(g.log_prior())[None].repeat(16, 0),
                             atol=1e-4)
  np.testing.assert_allclose(g.stationary @ g.rate_matrix, 0.0, atol=1e-12)


def test_make_process_and_errors():
  p = processes.make_process(ConfigDict(dict(name="masked", vocab_size=7, schedule="cosine")))
  assert p.num_states == 8 and p.mask_id == 7
  with pytest.raises(ValueError, match="unknown.*choose one of"):
    processes.make_process(ConfigDict(dict(name="gaussain", vocab_size=7)))
  with pytest.raises(ValueError, match="schedule"):
    processes.make_process(ConfigDict(dict(name="masked", vocab_size=7, schedule="linaer")))
  with pytest.raises(ValueError, match=r"\['rate_sigma'\]"):
    processes.make_process(ConfigDict(dict(name="masked", vocab_size=7, rate_sigma=1.0)))
  with pytest.raises(ValueError, match="out of range"):
    p.check_tokens(np.array([[0, 9]]))
  with pytest.raises(ValueError, match="one per example"):
    p.log_q_t0(jnp.zeros((3, 2), jnp.int32), jnp.zeros(2))
