"""The exact toolkit: brute-force posteriors, Theorem 1, closed-form TVs.

The toolkit is float64 numpy except `ideal_log_marginals`, a jax function
(it also serves as a teacher): it is checked in a `chex.TestCase` under
`chex.variants(with_jit=True, without_jit=True)`, jitted and eager.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mixture_dd import exact, processes, samplers


def _tv_curve(proc, probs, length, steps):
  fn = jax.jit(lambda x, t: exact.ideal_log_marginals(proc, probs, length, x, t))
  out = []
  for n in steps:
    law, left = exact.sampler_distribution(
      proc, lambda x, t, lam: fn(x, t), length, samplers.time_grid(n)
    )
    assert left < 1e-9
    np.testing.assert_allclose(law.sum(), 1.0, atol=1e-9)
    out.append(exact.total_variation(probs, law))
  return np.array(out)


def test_enumeration_and_families():
  st = exact.enumerate_states(3, 4)
  chex.assert_shape(st, (81, 4))
  np.testing.assert_array_equal(st[5], [0, 0, 1, 2])  # first dimension most significant
  np.testing.assert_array_equal(exact.state_index(st, 3), np.arange(81))
  for name in exact.FAMILIES:
    p = exact.make_family(name, 3, 4, seed=2)
    chex.assert_shape(p, (81,))
    assert abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
    chex.assert_trees_all_equal(p, exact.make_family(name, 3, 4, seed=2))  # seeded
  copies = exact.make_family("copies", 3, 4)
  assert set(np.nonzero(copies)[0]) == {0, 40, 80}
  with pytest.raises(ValueError, match="unknown family"):
    exact.make_family("copy", 3, 3)
  with pytest.raises(ValueError, match="too large"):
    exact.enumerate_states(50, 6)


class IdealMarginalsTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
    ("masked", processes.Masked(3, "cosine")),
    ("uniform", processes.Uniform(3, "linear")),
    ("gaussian", processes.GaussianCTMC(3, rate_sigma=1.0, q_sigma=2.0)),
  )
  def test_ideal_marginals_are_brute_force_bayes(self, proc):
    s_vocab, length, t = 3, 3, 0.55
    ideal = self.variant(exact.ideal_log_marginals, static_argnums=(0, 2))
    probs = exact.make_family("dirichlet", s_vocab, length, seed=3)
    x0s = exact.enumerate_states(s_vocab, length)  # [M, D]
    xts = exact.enumerate_states(proc.num_states, length)  # [N, D]
    q = np.asarray(proc.transition(0.0, t), np.float64)
    got = ideal(proc, probs, length, xts, t)
    chex.assert_shape(got, (len(xts), length, s_vocab))
    got = np.exp(np.asarray(got, np.float64))
    # Bayes over the whole of S^D: w[n, m] = p(x0_m) prod_d q(x_t^d = xts[n, d] | x0_m^d).
    w = probs * np.prod(q[x0s[None, :, :], xts[:, None, :]], axis=-1)  # [N, M]
    on = w.sum(-1) > 0
    w = w[on] / w[on].sum(-1, keepdims=True)
    ref = np.einsum("nm,mda->nda", w, np.eye(s_vocab)[x0s])
    np.testing.assert_allclose(got[on], ref, atol=1e-5)
    # One time per example = row b of the batch at the scalar time t_b.
    ts = np.array([0.2, 0.9], np.float32)
    per_example = ideal(proc, probs, length, xts[:2], ts)
    for b in range(2):
      chex.assert_trees_all_close(
        per_example[b], ideal(proc, probs, length, xts[:2], ts[b])[b], atol=1e-5
      )

  @chex.variants(with_jit=True, without_jit=True)
  def test_off_support_convention_for_copies(self):
    """Off the support: unmasked tokens kept, masked ones uniform (documented)."""
    proc = processes.Masked(3, "linear")
    probs = exact.make_family("copies", 3, 3)
    x = jnp.array([[0, 1, 3], [2, 3, 3]])  # first: impossible under copies
    ideal = self.variant(exact.ideal_log_marginals, static_argnums=(0, 2))
    m = np.exp(np.asarray(ideal(proc, probs, 3, x, 0.5)))
    np.testing.assert_allclose(m[0], [[1, 0, 0], [0, 1, 0], [1 / 3] * 3], atol=1e-6)
    np.testing.assert_allclose(m[1], [[0, 0, 1]] * 3, atol=1e-6)  # on support: copies of the 2


@pytest.mark.parametrize("s_vocab,length", [(3, 3), (4, 2), (2, 5)])
def test_one_step_product_on_copies_is_exactly_one_minus_s_to_one_minus_d(s_vocab, length):
  proc = processes.Masked(s_vocab, "linear")
  probs = exact.make_family("copies", s_vocab, length)
  tv = _tv_curve(proc, probs, length, [1])[0]
  np.testing.assert_allclose(tv, 1 - s_vocab ** (1 - length), atol=1e-6)


def test_theorem1_tv_falls_like_one_over_n():
  """Exact ideal product sampler, masked, linear schedule: slope of log TV ~ -1."""
  proc = processes.Masked(3, "linear")
  probs = exact.make_family("dirichlet", 3, 3, seed=0)
  steps = [8, 16, 32, 64, 128]
  tv = _tv_curve(proc, probs, 3, steps)
  slope = np.polyfit(np.log(steps), np.log(tv), 1)[0]
  assert -1.3 <= slope <= -0.7, (slope, tv)
  assert np.all(np.diff(tv) < 0)


def test_mixture_of_identical_components_is_the_product():
  proc = processes.Masked(3, "linear")
  probs = exact.make_family("markov", 3, 3, seed=1)
  fn = jax.jit(lambda x, t: exact.ideal_log_marginals(proc, probs, 3, x, t))
  grid = samplers.time_grid(3)
  a, _ = exact.sampler_distribution(proc, lambda x, t, lam: fn(x, t), 3, grid)
  b, _ = exact.sampler_distribution(proc, lambda x, t, lam: fn(x, t), 3, grid, num_latent_nodes=5)
  np.testing.assert_allclose(a, b, atol=1e-12)


def test_a_perfect_mixture_is_exact_in_one_step():
  """The quantile mixture x0 = F^-1(lambda) reproduces the data law in one step."""
  proc = processes.Masked(3, "linear")
  probs = exact.make_family("dirichlet", 3, 3, seed=4)
  states = exact.enumerate_states(3, 3)
  cdf = np.cumsum(probs)

  def comp(x, t, lam):
    j = min(int(np.searchsorted(cdf, lam)), len(probs) - 1)
    return np.log(np.eye(3)[states[j]] + 1e-30)[None].repeat(len(x), 0)

  # lambda -> state is piecewise constant: integrate with many nodes. Each of
  # its 26 jumps moves at most one node's weight (<= pi / (2 * 400) = 0.004)
  # to a neighbouring state, half of it on average: TV ~ 26 * 0.002 = 0.05
  # at most (0.017 here), where the best product sampler is at 0.43.
  law, _ = exact.sampler_distribution(proc, comp, 3, samplers.time_grid(1), num_latent_nodes=400)
  assert exact.total_variation(probs, law) < 0.05


def test_tv_and_kl():
  p = np.array([0.5, 0.5, 0.0])
  q = np.array([0.25, 0.25, 0.5])
  assert exact.total_variation(p, q) == pytest.approx(0.5)
  assert exact.kl_divergence(p, p) == 0.0
  assert exact.kl_divergence(p, q) == pytest.approx(np.log(2))
  assert exact.kl_divergence(q, p) == float("inf")
