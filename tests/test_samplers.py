"""Samplers: frequencies against exact kernels, jit parity, hybrid schedule.

The pure functions (categorical draws, analytic_step, step_log_kernel,
confidence_step, time_grid) are checked in `chex.TestCase` classes under
`chex.variants(with_jit=True, without_jit=True)`: every check runs on the
jitted function and on the eager one.

Frequency checks use `assert_chi2` (tests/conftest.py): Pearson's statistic
is chi2(cells - 1) under the null for any sample size once every cell
expects >= 5 draws (smaller cells are pooled), so its threshold, at false
alarm 1e-3, comes from the cell count; the sample size sets the power.
Every draw uses a fixed key.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mixture_dd import categorical, denoisers, exact, processes, samplers
from tests.conftest import assert_chi2

S, D = 3, 3


def _ideal(proc, family="dirichlet"):
  p = exact.make_family(family, S, D, seed=1)
  fn = jax.jit(lambda params, x, t: exact.ideal_log_marginals(proc, params, D, x, t))
  return p, fn


class CategoricalTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_frequencies_and_impossible_states(self):
    sample = self.variant(categorical.sample)
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    draws = sample(jax.random.key(1), jnp.broadcast_to(logits, (40000, 4)))
    chex.assert_shape(draws, (40000,))
    chex.assert_type(draws, jnp.int32)
    assert_chi2(np.bincount(np.asarray(draws), minlength=4), np.exp(logits))
    # -1e6 marks impossible states: never drawn.
    never = jnp.array([0.0, -1e6, 0.0])
    assert 1 not in np.asarray(sample(jax.random.key(2), jnp.broadcast_to(never, (5000, 3))))

  @chex.variants(with_jit=True, without_jit=True)
  def test_exponential_keeps_both_tails(self):
    # The Exp(1) draw keeps precision at both ends of the 64-bit uniform:
    # the smallest is (1/2) 2^-64, far below float32's 2^-24 Gumbel floor.
    from_bits = self.variant(categorical.exponential_from_bits)
    zero, full = jnp.uint32(0), jnp.uint32(0xFFFFFFFF)
    np.testing.assert_allclose(from_bits(zero, zero), 0.5 * 2.0**-64, rtol=1e-6)
    np.testing.assert_allclose(from_bits(full, full), -np.log(0.5 * 2.0**-64), rtol=1e-6)
    np.testing.assert_allclose(from_bits(jnp.uint32(2**31), zero), np.log(2.0), rtol=1e-6)
    n = 200000
    e = self.variant(categorical.exponential, static_argnums=1)(jax.random.key(3), (n,))
    chex.assert_type(e, jnp.float32)
    e = np.asarray(e, np.float64)
    # Exp(1) has unit variance, so the mean's standard error is 1 / sqrt(n);
    # P(E < 1e-3) = 1 - exp(-1e-3) ~ 1e-3, a binomial fraction with standard
    # error sqrt(p (1 - p) / n). 5 standard errors: false alarm ~ 6e-7.
    assert abs(e.mean() - 1.0) < 5 / np.sqrt(n)
    p = 1 - np.exp(-1e-3)
    assert abs(np.mean(e < 1e-3) - p) < 5 * np.sqrt(p * (1 - p) / n)


STEP_PROCS = [
  ("masked", processes.Masked(S, "linear")),
  ("uniform", processes.Uniform(S, "cosine")),
  ("gaussian", processes.GaussianCTMC(S, rate_sigma=1.0, q_sigma=2.0)),
]


class AnalyticStepTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*STEP_PROCS)
  def test_analytic_step_matches_exact_kernel(self, proc):
    """Joint frequencies of one step over (x_s^1, x_s^2) = product of exact kernels."""
    # n = 30000 draws over K^2 = 9 cells (chi-square test, see the module doc).
    n = 30000
    step_log_kernel = self.variant(samplers.step_log_kernel, static_argnums=0)
    analytic_step = self.variant(samplers.analytic_step, static_argnums=1)
    logits = jnp.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]])
    x_t = jnp.array([[proc.num_states - 1, 0]], jnp.int32)
    t, s = 0.7, 0.4
    k = proc.num_states
    lk = step_log_kernel(proc, x_t, t, s, logits)
    chex.assert_shape(lk, (1, 2, k))
    lk = np.asarray(lk, np.float64)[0]
    np.testing.assert_allclose(np.exp(lk).sum(-1), 1.0, atol=1e-5)
    # Marginally per dimension, the kernel is sum_a p(a | x_t) q(. | x_t, x0 = a).
    p0 = np.asarray(jax.nn.softmax(logits[0]), np.float64)
    post = np.stack(
      [
        np.exp(np.asarray(proc.log_posterior(x_t, jnp.full_like(x_t, a), s, t), np.float64))[0]
        for a in range(S)
      ],
      1,
    )  # [D, S, K]
    np.testing.assert_allclose(np.exp(lk), np.einsum("da,dak->dk", p0, post), atol=1e-5)
    x_s = analytic_step(
      jax.random.key(0), proc, jnp.repeat(x_t, n, 0), t, s, jnp.repeat(logits, n, 0)
    )
    chex.assert_shape(x_s, (n, 2))
    chex.assert_type(x_s, jnp.int32)
    x_s = np.asarray(x_s)
    joint = np.bincount(x_s[:, 0] * k + x_s[:, 1], minlength=k * k)
    assert_chi2(joint, np.outer(np.exp(lk[0]), np.exp(lk[1])).ravel())
    # The step checks its shapes (chex asserts), eagerly and while tracing.
    with pytest.raises(AssertionError):
      analytic_step(jax.random.key(0), proc, x_t, t, s, logits[..., :2])


class ConfidenceStepTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_reveals_the_scheduled_count_most_confident_first(self):
    """Position d allows its first m_d tokens, uniformly: whatever is drawn,
    log p(draw) = -log m_d, so confidence orders the masked positions by m_d.
    Rows 0-1 (temperature 0) must reveal exactly the most confident ones;
    rows 2-3 (temperature 50: random order) must still reveal exactly the
    scheduled count. Revealed tokens stay as they are."""
    proc = processes.Masked(4, "arccos")
    m = proc.mask_id
    step = self.variant(samplers.confidence_step, static_argnums=1)
    allowed = np.array([1, 4, 3, 2, 4, 1])  # tokens 0 .. m_d - 1 possible at d
    x = jnp.tile(jnp.array([m, 3, m, m, m, 0], jnp.int32), (4, 1))  # 4 masked, 2 revealed
    logits = jnp.where(jnp.arange(4) < allowed[:, None], 0.0, -1e6)[None].repeat(4, 0)
    n_after = jnp.array([2, 0, 1, 3])
    out = step(jax.random.key(7), proc, x, logits, n_after, jnp.array([0.0, 0.0, 50.0, 50.0]))
    chex.assert_shape(out, x.shape)
    chex.assert_type(out, jnp.int32)
    out = np.asarray(out)
    was_masked = np.asarray(x) == m
    np.testing.assert_array_equal(out[~was_masked], np.asarray(x)[~was_masked])
    np.testing.assert_array_equal((out == m).sum(-1), n_after)
    revealed = was_masked & (out != m)
    assert (out[revealed] < np.broadcast_to(allowed, out.shape)[revealed]).all(), out
    # Temperature 0, two to reveal: the positions with m_d = 1 and m_d = 2.
    np.testing.assert_array_equal(revealed[0], [True, False, False, True, False, False])
    assert out[0, 0] == 0 and out[0, 3] in (0, 1)


class TimeGridTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_time_grid(self):
    time_grid = self.variant(samplers.time_grid, static_argnums=(0, 1, 2, 3))
    g = time_grid(4, "uniform", 1.0, 0.0)
    chex.assert_shape(g, (5,))
    chex.assert_type(g, jnp.float32)
    np.testing.assert_allclose(g, [1.0, 0.75, 0.5, 0.25, 0.0])
    c = np.asarray(time_grid(8, "cosine", 1.0, 0.01))
    assert c[0] == pytest.approx(1.0) and c[-1] == pytest.approx(0.01)
    # 1 - cos(pi/2 r) from t_min = 0.01 to t_max = 1 at r = 1 - i / 8.
    np.testing.assert_allclose(
      c, 0.01 + 0.99 * (1 - np.cos(0.5 * np.pi * np.linspace(1, 0, 9))), atol=1e-6
    )
    assert np.diff(c)[-1] > np.diff(c)[0]  # finer steps at the data end
    with pytest.raises(ValueError, match="num_steps"):
      time_grid(0, "uniform", 1.0, 0.0)
    with pytest.raises(ValueError, match="grid"):
      time_grid(3, "cosinus", 1.0, 0.0)
    with pytest.raises(ValueError, match="t_min"):
      time_grid(3, "uniform", 0.5, 0.5)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_sampler_law_matches_exact_toolkit_product_and_mixture(num_steps):
  """Monte Carlo histograms of full N-step runs = the exact pushed-forward law."""
  proc = processes.Masked(S, "linear")
  p, ideal = _ideal(proc)
  n = 40000
  got = samplers.sample(
    jax.random.key(num_steps),
    proc,
    denoisers.from_function(ideal),
    p,
    n,
    D,
    num_steps,
    final="none",
  )
  hist = np.bincount(exact.state_index(np.asarray(got), S), minlength=S**D)
  law, left = exact.sampler_distribution(
    proc, lambda x, t, lam: ideal(p, x, t), D, samplers.time_grid(num_steps)
  )
  assert left < 1e-9
  assert_chi2(hist, law)

  # A smooth mixture: lambda tilts every dimension the same way.
  def comp(params, x, t, key=None, lam=None, labels=None):
    base = ideal(params, x, t)
    tilt = 3.0 * jnp.cos(jnp.pi * lam)[:, None, None] * jnp.array([1.0, 0.0, -1.0])
    return base + tilt

  got = samplers.sample(
    jax.random.key(10 + num_steps), proc, denoisers.mixture(comp), p, n, D, num_steps, final="none"
  )
  hist = np.bincount(exact.state_index(np.asarray(got), S), minlength=S**D)
  law, _ = exact.sampler_distribution(
    proc, denoisers.exact_view(comp, p), D, samplers.time_grid(num_steps), num_latent_nodes=24
  )
  assert_chi2(hist, law)


def test_jit_and_no_jit_agree():
  proc = processes.Masked(S, "cosine")
  p, ideal = _ideal(proc)
  den = denoisers.from_function(ideal)
  times = samplers.time_grid(4, "cosine")
  x = proc.prior_sample(None, (16, D))
  key = jax.random.key(5)
  time_at = lambda i: times[i]
  eager = samplers.run_steps(key, proc, den, p, x, time_at, 0, 4)
  jitted = jax.jit(
    functools.partial(samplers.run_steps, process=proc, denoiser=den, time_at=time_at)
  )(key, params=p, x=x, first=0, last=4)
  np.testing.assert_array_equal(eager, jitted)
  a = samplers.sample.__wrapped__(key, proc, den, p, 16, D, 4, final="argmax")
  b = samplers.sample(key, proc, den, p, 16, D, 4, final="argmax")
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(b) < S).all()


def test_hybrid_uses_first_then_second():
  """A says 0, B says 1: tokens unmasked in the first N - M of N linear steps are 0."""
  proc = processes.Masked(S, "linear")
  zero = denoisers.from_function(
    lambda p, x, t: jnp.where(jnp.arange(S) == 0, 0.0, -1e6) + 0 * x[..., None]
  )
  one = denoisers.from_function(
    lambda p, x, t: jnp.where(jnp.arange(S) == 1, 0.0, -1e6) + 0 * x[..., None]
  )
  n, length = 4000, 8
  out = np.asarray(
    samplers.sample(
      jax.random.key(0),
      proc,
      zero,
      None,
      n,
      length,
      4,
      second=one,
      second_params=None,
      second_steps=3,  # of 4: A takes the first step
      final="none",
    )
  )
  assert set(np.unique(out)) <= {0, 1}
  # After 1 of 4 linear steps (t = 0.75) a token is unmasked w.p. 1 - 0.75,
  # independently of every other token (the denoisers ignore x): the zeros
  # are a binomial fraction of n * length tokens with standard error
  # sqrt(p (1 - p) / (n * length)); 5 of them: false alarm ~ 6e-7.
  frac = (out == 0).mean()
  assert abs(frac - 0.25) < 5 * np.sqrt(0.25 * 0.75 / out.size), frac


def test_final_step_fills_only_masks():
  """The final denoise at t_min = 0.3 redraws masked tokens only. The
  denoiser ignores x and favours token 0 during the analytic steps (t > 0.5)
  but token 2 at the final call, so redrawing the unmasked tokens too would
  shift the law (an ideal denoiser would hide that: it is sure of them)."""
  proc = processes.Masked(S, "linear")

  def fn(p, x, t):
    early, late = jnp.array([2.0, 0.0, 0.0]), jnp.array([0.0, 0.0, 2.0])
    return jnp.where((t > 0.5)[:, None, None], early, late) + 0.0 * x[..., None]

  den = denoisers.from_function(fn)
  n = 20000
  out = samplers.sample(jax.random.key(3), proc, den, None, n, D, 2, t_min=0.3, final="sample")
  assert (np.asarray(out) < S).all()
  law, left = exact.sampler_distribution(
    proc,
    lambda x, t, lam: fn(None, x, jnp.full(len(x), t, jnp.float32)),
    D,
    samplers.time_grid(2, t_min=0.3),
    final="sample",
  )
  assert left == 0.0
  np.testing.assert_allclose(law.sum(), 1.0, atol=1e-9)
  # The samples follow the toolkit's law, which keeps unmasked tokens
  # (chi-square over the 27 states, see the module doc).
  assert_chi2(np.bincount(exact.state_index(np.asarray(out), S), minlength=S**D), law)
  with pytest.raises(ValueError, match="final"):
    samplers.finalize(jax.random.key(0), proc, den, None, out, 0.0, "mode")


def test_maskgit_reveal_schedule():
  assert samplers.reveal_schedule(256, 4) == [41, 44, 53, 118]
  for n in (1, 3, 8):
    assert sum(samplers.reveal_schedule(64, n)) == 64
    assert all(c >= 1 for c in samplers.reveal_schedule(64, n))


def test_confidence_sampler_reveals_the_most_confident_first():
  """Temperature 0: step 1 of 4 reveals exactly the scheduled count, at the
  most confident positions. The denoiser predicts token 0 while everything is
  masked and token 1 afterwards, so the output records what step 1 revealed."""
  proc = processes.Masked(4, "arccos")
  length = 16
  sharp = jnp.linspace(4.0, 9.0, length)  # confidence grows with position

  def fn(p, x, t):
    # Token 0 (first step) or 1 (later) with logit sharp[d], token 2 with 0,
    # token 3 never: log p(draw) orders the positions by sharp.
    first = jnp.all(x == 4, axis=-1)[:, None, None]
    s = sharp[None, :, None]
    zero = jnp.zeros_like(s)
    step1 = jnp.concatenate([s, zero - 1e6, zero, zero - 1e6], -1)
    later = jnp.concatenate([zero - 1e6, s, zero, zero - 1e6], -1)
    return jnp.where(first, step1, later)

  out = np.asarray(
    samplers.confidence_sample(
      jax.random.key(0),
      proc,
      denoisers.from_function(fn),
      None,
      8,
      length,
      4,
      choice_temperature=0.0,
    )
  )
  first_count = samplers.reveal_schedule(length, 4)[0]
  assert (out != 4).all()
  np.testing.assert_array_equal(
    out == 0, np.tile(np.arange(length) >= length - first_count, (8, 1))
  )


def test_guidance_uses_the_same_lambda_for_both_passes():
  proc = processes.Masked(3, "arccos")

  def comp(p, x, t, key, lam=None, labels=None):  # cond == uncond when lambda is shared
    return jnp.stack([jnp.sin(7 * lam), jnp.cos(5 * lam), lam], -1)[:, None, :] + 0.0 * x[..., None]

  mix = denoisers.mixture(comp)
  plain = samplers.confidence_sample(jax.random.key(2), proc, mix, None, 64, 5, 3)
  cfg = samplers.confidence_sample(
    jax.random.key(2), proc, samplers.guided(mix, mix, 3.0), None, 64, 5, 3
  )
  np.testing.assert_array_equal(plain, cfg)
  ramped = samplers.confidence_sample(
    jax.random.key(2), proc, mix, None, 64, 5, 3, uncond=mix, guidance=3.0
  )
  np.testing.assert_array_equal(plain, ramped)


def test_confidence_guidance_ramps_from_zero():
  """w_k = w k / (N - 1): the first step is unguided, so with N = 1 any
  unconditional denoiser leaves the output unchanged, while at N = 2 a
  strongly different one changes the second step."""
  proc = processes.Masked(3, "arccos")
  lc, lu = np.array([1.0, 0.0, 0.0]), np.array([1.5, 0.0, 0.0])
  cond = denoisers.from_function(lambda p, x, t: jnp.zeros(x.shape + (3,)) + lc)
  uncond = denoisers.from_function(lambda p, x, t: jnp.zeros(x.shape + (3,)) + lu)
  n, length = 2048, 4
  args = (jax.random.key(0), proc, cond, None, n, length)
  np.testing.assert_array_equal(
    samplers.confidence_sample(*args, 1),
    samplers.confidence_sample(*args, 1, uncond=uncond, guidance=5.0),
  )
  a = np.asarray(samplers.confidence_sample(*args, 2))
  b = np.asarray(samplers.confidence_sample(*args, 2, uncond=uncond, guidance=5.0))
  # Step 1 (w = 0) reveals 1 token per row, identically in a and b (same key,
  # same logits); step 2 (w = 5) draws the other 3 from p(. | c) in a and
  # from softmax(6 log p(. | c) - 5 log p(.)) in b, one independent draw per
  # token. So the gap in the fraction of zeros has mean (3/4) (p0_a - p0_b)
  # and, per run, standard error at most (3/4) (sd_a + sd_b), sd = the
  # binomial sqrt(p0 (1 - p0) / (3 n)), 0.0076 here; 5 of them. (w = 2.5, a
  # wrong ramp, would move the mean by 0.135, about 18 standard errors.)
  assert samplers.reveal_schedule(length, 2) == [1, 3]
  log_softmax = lambda v: v - np.log(np.exp(v).sum())
  p0_a = np.exp(log_softmax(lc))[0]
  p0_b = np.exp(log_softmax(6 * log_softmax(lc) - 5 * log_softmax(lu)))[0]
  sd = lambda p: np.sqrt(p * (1 - p) / (3 * n))
  gap = (a == 0).mean() - (b == 0).mean()
  assert abs(gap - 0.75 * (p0_a - p0_b)) < 5 * 0.75 * (sd(p0_a) + sd(p0_b)), (gap, p0_a, p0_b)


def _counting(fn, calls):
  def counted(params, x, t, key, lam=None, labels=None):
    jax.debug.callback(lambda: calls.append(1))
    return fn(params, x, t, key)

  return counted


@pytest.mark.parametrize("num_steps", [1, 2, 5])
def test_every_sampler_makes_exactly_n_network_calls(num_steps):
  """tauLDR: N - 1 analytic steps + the final argmax (uniform, Gaussian);
  masked: N steps, the final denoise skipped when nothing is left masked."""
  for proc in (processes.Uniform(S, "linear"), processes.Masked(S, "linear")):
    p, ideal = _ideal(proc)
    calls = []
    out = samplers.sample(
      jax.random.key(0), proc, _counting(denoisers.from_function(ideal), calls), p, 8, D, num_steps
    )
    jax.block_until_ready(out)
    assert len(calls) == num_steps, (proc, num_steps, len(calls))
    # One compiled program for every N: num_steps is traced.
    assert (np.asarray(out) < S).all()


@pytest.mark.parametrize("num_steps", [2, 4])
def test_uniform_sampler_law_matches_exact_toolkit(num_steps):
  """The tauLDR schedule (N - 1 steps to t = 0.01, then argmax) sampled =
  the exact law of `schedule` pushed through the toolkit. (N = 1 is the
  argmax at t = 1: a single state.)"""
  proc = processes.Uniform(S, "linear")
  p, ideal = _ideal(proc)
  n = 40000
  got = samplers.sample(
    jax.random.key(num_steps), proc, denoisers.from_function(ideal), p, n, D, num_steps
  )
  hist = np.bincount(exact.state_index(np.asarray(got), S), minlength=S**D)
  times, t_final = samplers.schedule(proc, num_steps)
  assert t_final == pytest.approx(0.01) and len(times) == num_steps
  assert samplers.schedule(proc, 1) == (pytest.approx([1.0]), 1.0)
  law, _ = exact.sampler_distribution(
    proc, lambda x, t, lam: ideal(p, x, t), D, times, final="argmax"
  )
  assert_chi2(hist, law)
