"""Forward processes against float64 references and brute-force Bayes.

The processes' pure functions (alpha, integrated_rate, transition, log_q_t0,
log_posterior, sample_xt, the prior) are checked in `chex.TestCase` classes
under `chex.variants(with_jit=True, without_jit=True)`: every check runs on
the jitted function and on the eager one.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from absl.testing import parameterized
from ml_collections import ConfigDict

from mixture_dd import processes
from tests.conftest import assert_chi2

TIMES = [(0.0, 0.3), (0.1, 0.5), (0.4, 0.41), (0.25, 0.9), (0.6, 1.0)]
S_TIMES = np.array([s for s, _ in TIMES], np.float32)
T_TIMES = np.array([t for _, t in TIMES], np.float32)


def _alpha64(schedule, t):
  t = np.float64(t)
  return {
    "loglinear": 1 - (1 - 1e-3) * t,
    "linear": 1 - t,
    "cosine": 1 - np.cos(np.pi / 2 * (1 - t)),
    "arccos": 1 - np.arccos(1 - t) / (np.pi / 2),
  }[schedule]


def _integrated_rate64(proc, t):
  return proc.time_base * (proc.time_exp ** np.float64(t) - 1)


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
  tau = _integrated_rate64(proc, t) - _integrated_rate64(proc, s)
  return scipy.linalg.expm(tau * proc.rate_matrix)


ALL = [processes.Masked(5, schedule=s) for s in processes.SCHEDULES] + [
  processes.Uniform(5, "linear"),
  processes.Uniform(6, "cosine"),
  processes.GaussianCTMC(8, rate_sigma=2.0, q_sigma=3.0),
  processes.GaussianCTMC(32),
]
NAMED = [(f"{p.name}_{getattr(p, 'schedule', p.vocab_size)}", p) for p in ALL]
SCHEDULE_NAMES = [(s, s) for s in processes.SCHEDULES]
# One process of each kind.
ONE_EACH = [("masked", ALL[0]), ("uniform", ALL[4]), ("gaussian", ALL[6])]


class ScheduleTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*SCHEDULE_NAMES)
  def test_alpha_matches_float64_reference(self, schedule):
    ts = np.linspace(0.0, 1.0, 21)
    for proc in (processes.Masked(3, schedule), processes.Uniform(3, schedule)):
      alpha = np.asarray(self.variant(proc.alpha)(ts), np.float64)
      chex.assert_shape(alpha, ts.shape)
      np.testing.assert_allclose(alpha, _alpha64(schedule, ts), atol=1e-6)
      assert alpha[0] == pytest.approx(1.0, abs=1e-6)
      assert np.all(np.diff(alpha) < 0), alpha  # strictly fewer clean tokens over time

  @chex.variants(with_jit=True, without_jit=True)
  def test_gaussian_integrated_rate(self):
    proc = processes.GaussianCTMC(8, time_base=2.0, time_exp=50.0)
    ts = np.linspace(0.0, 1.0, 11)
    got = self.variant(proc.integrated_rate)(jnp.asarray(ts, jnp.float32))
    np.testing.assert_allclose(got, _integrated_rate64(proc, ts), rtol=1e-5, atol=1e-6)
    # The rate matrix is a generator: rows sum to zero, off-diagonals >= 0.
    np.testing.assert_allclose(proc.rate_matrix.sum(-1), 0.0, atol=1e-12)
    assert (proc.rate_matrix - np.diag(np.diag(proc.rate_matrix)) >= 0).all()


class TransitionTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*NAMED)
  def test_transition_matches_float64_reference_and_chapman_kolmogorov(self, proc):
    k = proc.num_states
    transition = self.variant(proc.transition)
    # All TIMES in one call with per-example times [T], and the scalar path.
    q_ts = np.asarray(transition(S_TIMES, T_TIMES), np.float64)
    q_s0 = np.asarray(transition(np.zeros_like(S_TIMES), S_TIMES), np.float64)
    q_t0 = np.asarray(transition(np.zeros_like(T_TIMES), T_TIMES), np.float64)
    chex.assert_shape([q_ts, q_s0, q_t0], (len(TIMES), k, k))
    chex.assert_trees_all_close(transition(0.1, 0.5), q_ts[1], atol=1e-6)
    for i, (s, t) in enumerate(TIMES):
      ref = reference_transition(proc, s, t)
      np.testing.assert_allclose(q_ts[i], ref, atol=2e-5, err_msg=f"s={s}, t={t}")
      np.testing.assert_allclose(q_ts[i].sum(-1), 1.0, atol=1e-5)
      assert (q_ts[i] >= 0).all()
      # Chapman-Kolmogorov: q_{t|0} = q_{s|0} q_{t|s}; the float64 reference
      # first (a check of the reference itself), then the float32 library.
      ref_t0 = reference_transition(proc, 0.0, t)
      np.testing.assert_allclose(reference_transition(proc, 0.0, s) @ ref, ref_t0, atol=1e-10)
      np.testing.assert_allclose(q_s0[i] @ q_ts[i], ref_t0, atol=5e-5)
      np.testing.assert_allclose(q_t0[i], ref_t0, atol=2e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*NAMED)
  def test_posterior_is_brute_force_bayes(self, proc):
    k, sv = proc.num_states, proc.vocab_size
    log_posterior = self.variant(proc.log_posterior)
    xt, x0 = np.meshgrid(np.arange(k), np.arange(sv), indexing="ij")
    xt, x0 = xt.reshape(-1), x0.reshape(-1)
    for s, t in TIMES[:4]:
      q_s0 = reference_transition(proc, 0.0, s)
      q_ts = reference_transition(proc, s, t)
      q_t0 = reference_transition(proc, 0.0, t)
      got = log_posterior(jnp.asarray(xt[None]), jnp.asarray(x0[None]), s, t)
      chex.assert_shape(got, (1, k * sv, k))
      got = np.exp(np.asarray(got, np.float64))[0]
      np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
      # Bayes, row r = (x_t, x0): q(x_s = b | x_t, x0) = q_{t|s}(x_t | b) q_{s|0}(b | x0) / q_{t|0}(x_t | x0),
      # on the rows where x_t is possible given x0 (elsewhere it is undefined).
      possible = q_t0[x0, xt] >= 1e-12
      bayes = q_ts[:, xt].T * q_s0[x0] / np.where(possible, q_t0[x0, xt], 1.0)[:, None]
      np.testing.assert_allclose(got[possible], bayes[possible], atol=2e-4, err_msg=f"s={s}, t={t}")

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*SCHEDULE_NAMES)
  def test_masked_posterior_closed_form(self, schedule):
    proc = processes.Masked(4, schedule=schedule)
    s, t = 0.3, 0.7
    x_t = jnp.array([[4, 4, 2]])
    x0 = jnp.array([[1, 3, 0]])
    p = np.exp(np.asarray(self.variant(proc.log_posterior)(x_t, x0, s, t), np.float64))[0]
    a_s, a_t = _alpha64(schedule, s), _alpha64(schedule, t)
    unmask = (a_s - a_t) / (1 - a_t)
    np.testing.assert_allclose(p[0], unmask * np.eye(5)[1] + (1 - unmask) * np.eye(5)[4], atol=1e-6)
    np.testing.assert_allclose(p[1], unmask * np.eye(5)[3] + (1 - unmask) * np.eye(5)[4], atol=1e-6)
    np.testing.assert_allclose(p[2], np.eye(5)[2], atol=1e-7)  # unmasked stays

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*ONE_EACH)
  def test_per_example_times_match_scalar_times(self, proc):
    log_q_t0 = self.variant(proc.log_q_t0)
    log_posterior = self.variant(proc.log_posterior)
    transition = self.variant(proc.transition)
    x0 = jnp.array([[0, 1, 2], [3, 4, 0]])
    x_t = jnp.array([[0, 2, proc.num_states - 1], [3, 1, 0]])
    ts = jnp.array([0.3, 0.8])
    ss = jnp.array([0.1, 0.5])
    lq = log_q_t0(x0, ts)
    lp = log_posterior(x_t, x0, ss, ts)
    chex.assert_shape([lq, lp], (2, 3, proc.num_states))
    chex.assert_type([lq, lp], jnp.float32)
    for b in range(2):  # row b of the batch at the scalar times (s_b, t_b)
      chex.assert_trees_all_close(lq[b], log_q_t0(x0, ts[b])[b], atol=1e-5)
      chex.assert_trees_all_close(lp[b], log_posterior(x_t, x0, ss[b], ts[b])[b], atol=1e-5)
    np.testing.assert_allclose(np.exp(lq[0]), np.asarray(transition(0.0, 0.3))[x0[0]], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*ONE_EACH)
  def test_sample_xt_frequencies(self, proc):
    # Pearson's statistic is chi2(cells - 1) under the null for any n once
    # every cell expects >= 5 draws (assert_chi2 pools the smaller ones), so
    # the threshold (false alarm 1e-3) comes from the cell count, and n sets
    # the power: mass d moved between cells of mass p and q gives the
    # noncentrality n d^2 (1/p + 1/q), 33 at n = 20000 for d = 0.02 and the
    # masked row (p, q) = (0.4, 0.6): above the 1-dof threshold 10.8 with
    # probability 0.99.
    n = 20000
    x0 = jnp.full((n, 1), 2, jnp.int32)
    x_t = self.variant(proc.sample_xt)(jax.random.key(0), x0, 0.6)
    chex.assert_shape(x_t, (n, 1))
    chex.assert_type(x_t, jnp.int32)
    counts = np.bincount(np.asarray(x_t).ravel(), minlength=proc.num_states)
    assert_chi2(counts, np.asarray(proc.transition(0.0, 0.6))[2])

  @chex.variants(with_jit=True, without_jit=True)
  def test_prior_is_the_t1_marginal_or_stationary_law(self):
    m = processes.Masked(5, "linear")
    np.testing.assert_allclose(
      np.exp(self.variant(m.log_prior)()), np.asarray(m.transition(0.0, 1.0))[0], atol=1e-6
    )
    x1 = self.variant(m.prior_sample, static_argnums=1)(jax.random.key(0), (2, 3))
    chex.assert_trees_all_equal(x1, jnp.full((2, 3), 5, jnp.int32))
    g = processes.GaussianCTMC(16)
    # After B(1) = 297 units of rate the chain has forgotten its start.
    np.testing.assert_allclose(
      np.asarray(self.variant(g.transition)(0.0, 1.0)),
      np.exp(self.variant(g.log_prior)())[None].repeat(16, 0),
      atol=1e-4,
    )
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


@pytest.mark.parametrize("proc", [ALL[0], ALL[4], ALL[6]], ids=["masked", "uniform", "gaussian"])
def test_times_must_be_scalar_or_one_per_example(proc):
  x = jnp.zeros((3, 2), jnp.int32)
  with pytest.raises(ValueError, match="one per example"):
    proc.log_q_t0(x, jnp.full(2, 0.5))
  with pytest.raises(ValueError, match="one per example"):
    proc.log_posterior(x, x, jnp.full(2, 0.2), jnp.full(2, 0.5))
