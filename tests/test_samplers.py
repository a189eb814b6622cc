"""Samplers: frequencies against exact kernels, jit parity, hybrid schedule."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_dd import categorical, exact, processes, samplers
from tests.conftest import assert_chi2

S, D = 3, 3


def _ideal(proc, family="dirichlet"):
  p = exact.make_family(family, S, D, seed=1)
  fn = jax.jit(lambda params, x, t: exact.ideal_log_marginals(proc, params, D, x, t))
  return p, fn


def test_categorical_frequencies_and_tails():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  draws = np.asarray(categorical.sample(jax.random.key(1), jnp.broadcast_to(logits, (40000, 4))))
  assert_chi2(np.bincount(draws, minlength=4), np.exp(logits))
  # -1e6 marks impossible states: never drawn.
  never = jnp.array([0.0, -1e6, 0.0])
  assert 1 not in np.asarray(categorical.sample(jax.random.key(2), jnp.broadcast_to(never, (5000, 3))))
  # The Exp(1) draw keeps precision at both ends of the 64-bit uniform:
  # the smallest is (1/2) 2^-64, far below float32's 2^-24 Gumbel floor.
  zero, full = jnp.uint32(0), jnp.uint32(0xFFFFFFFF)
  np.testing.assert_allclose(categorical.exponential_from_bits(zero, zero), 0.5 * 2.0 ** -64, rtol=1e-6)
  np.testing.assert_allclose(categorical.exponential_from_bits(full, full), -np.log(0.5 * 2.0 ** -64),
                             rtol=1e-6)
  np.testing.assert_allclose(categorical.exponential_from_bits(jnp.uint32(2 ** 31), zero), np.log(2.0),
                             rtol=1e-6)
  e = np.asarray(categorical.exponential(jax.random.key(3), (200000,)), np.float64)
  se = 1.0 / np.sqrt(len(e))  # Exp(1) has unit variance
  assert abs(e.mean() - 1.0) < 5 * se
  assert abs(np.mean(e < 1e-3) - (1 - np.exp(-1e-3))) < 5 * np.sqrt(1e-3 / len(e))


@pytest.mark.parametrize("proc", [processes.Masked(S, "linear"), processes.Uniform(S, "cosine"),
                                  processes.GaussianCTMC(S, rate_sigma=1.0, q_sigma=2.0)],
                         ids=["masked", "uniform", "gaussian"])
def test_analytic_step_matches_exact_kernel(proc):
  """Joint frequencies of one step over (x_s^1, x_s^2) = product of exact kernels."""
  n = 30000
  logits = jnp.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]])
  x_t = jnp.array([[proc.num_states - 1, 0]], jnp.int32)
  t, s = 0.7, 0.4
  lk = np.asarray(samplers.step_log_kernel(proc, x_t, t, s, logits), np.float64)[0]
  np.testing.assert_allclose(np.exp(lk).sum(-1), 1.0, atol=1e-5)
  x_s = samplers.analytic_step(jax.random.key(0), proc, jnp.repeat(x_t, n, 0), t, s,
                               jnp.repeat(logits, n, 0))
  chex.assert_shape(x_s, (n, 2))
  chex.assert_type(x_s, jnp.int32)
  k = proc.num_states
  x_s = np.asarray(x_s)
  joint = np.bincount(x_s[:, 0] * k + x_s[:, 1], minlength=k * k)
  assert_chi2(joint, np.outer(np.exp(lk[0]), np.exp(lk[1])).ravel())


@pytest.mark.parametrize("num_steps", [1, 3])
def test_sampler_law_matches_exact_toolkit_product_and_mixture(num_steps):
  """Monte Carlo histograms of full N-step runs = the exact pushed-forward law."""
  proc = processes.Masked(S, "linear")
  p, ideal = _ideal(proc)
  n = 40000
  got = samplers.sample(jax.random.key(num_steps), proc, samplers.product(ideal), p, n, D, num_steps,
                        final="none")
  hist = np.bincount(exact.state_index(np.asarray(got), S), minlength=S ** D)
  law, left = exact.sampler_distribution(proc, lambda x, t, lam: ideal(p, x, t), D,
                                         samplers.time_grid(num_steps))
  assert left < 1e-9
  assert_chi2(hist, law)

  # A smooth mixture: lambda tilts every dimension the same way.
  def comp(params, x, t, lam):
    base = ideal(params, x, t)
    tilt = 3.0 * jnp.cos(jnp.pi * lam)[:, None, None] * jnp.array([1.0, 0.0, -1.0])
    return base + tilt
  got = samplers.sample(jax.random.key(10 + num_steps), proc, samplers.mixture(comp), p, n, D,
                        num_steps, final="none")
  hist = np.bincount(exact.state_index(np.asarray(got), S), minlength=S ** D)
  law, _ = exact.sampler_distribution(
      proc, lambda x, t, lam: comp(p, x, jnp.full(x.shape[:1], t), jnp.full(x.shape[:1], lam)), D,
      samplers.time_grid(num_steps), num_latent_nodes=24)
  assert_chi2(hist, law)


def test_jit_and_no_jit_agree():
  proc = processes.Masked(S, "cosine")
  p, ideal = _ideal(proc)
  den = samplers.product(ideal)
  times = samplers.time_grid(4, "cosine")
  x = proc.prior_sample(None, (16, D))
  key = jax.random.key(5)
  time_at = lambda i: times[i]
  eager = samplers.run_steps(key, proc, den, p, x, time_at, 0, 4)
  jitted = jax.jit(functools.partial(samplers.run_steps, process=proc, denoiser=den,
                                     time_at=time_at))(key, params=p, x=x, first=0, last=4)
  np.testing.assert_array_equal(eager, jitted)
  a = samplers.sample.__wrapped__(key, proc, den, p, 16, D, 4, final="argmax")
  b = samplers.sample(key, proc, den, p, 16, D, 4, final="argmax")
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(b) < S).all()


def test_time_grid():
  g = np.asarray(samplers.time_grid(4))
  np.testing.assert_allclose(g, [1.0, 0.75, 0.5, 0.25, 0.0])
  c = np.asarray(samplers.time_grid(8, "cosine", t_max=1.0, t_min=0.01))
  assert c[0] == pytest.approx(1.0) and c[-1] == pytest.approx(0.01)
  assert np.all(np.diff(c) < 0)
  assert np.diff(c)[-1] > np.diff(c)[0]  # finer steps at the data end
  with pytest.raises(ValueError, match="num_steps"):
    samplers.time_grid(0)
  with pytest.raises(ValueError, match="grid"):
    samplers.time_grid(3, "cosinus")


def test_hybrid_uses_first_then_second():
  """A says 0, B says 1: tokens unmasked in the first K of N linear steps are 0."""
  proc = processes.Masked(S, "linear")
  zero = samplers.product(lambda p, x, t: jnp.where(jnp.arange(S) == 0, 0.0, -1e6) + 0 * x[..., None])
  one = samplers.product(lambda p, x, t: jnp.where(jnp.arange(S) == 1, 0.0, -1e6) + 0 * x[..., None])
  n, length = 4000, 8
  out = np.asarray(samplers.sample(jax.random.key(0), proc, zero, None, n, length, 4, second=one,
                                   second_params=None, num_first=1, final="none"))
  assert set(np.unique(out)) <= {0, 1}
  # After 1 of 4 linear steps (t = 0.75) a token is unmasked w.p. 1 - 0.75.
  frac = (out == 0).mean()
  se = np.sqrt(0.25 * 0.75 / out.size) * np.sqrt(length)  # generous: tokens are i.i.d. here
  assert abs(frac - 0.25) < 5 * se


def test_final_step_fills_only_masks():
  proc = processes.Masked(S, "linear")
  p, ideal = _ideal(proc)
  out = samplers.sample(jax.random.key(3), proc, samplers.product(ideal), p, 500, D, 2, t_min=0.3,
                        final="sample")
  assert (np.asarray(out) < S).all()
  law, _ = exact.sampler_distribution(proc, lambda x, t, lam: ideal(p, x, t), D,
                                      samplers.time_grid(2, t_min=0.3), final="sample")
  np.testing.assert_allclose(law.sum(), 1.0, atol=1e-9)
  with pytest.raises(ValueError, match="final"):
    samplers.finalize(jax.random.key(0), proc, samplers.product(ideal), p, out, 0.0, "mode")


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
  out = np.asarray(samplers.confidence_sample(jax.random.key(0), proc, samplers.product(fn), None,
                                              8, length, 4, choice_temperature=0.0))
  first_count = samplers.reveal_schedule(length, 4)[0]
  assert (out != 4).all()
  np.testing.assert_array_equal(out == 0, np.tile(np.arange(length) >= length - first_count, (8, 1)))


def test_guidance_uses_the_same_lambda_for_both_passes():
  proc = processes.Masked(3, "arccos")
  def comp(p, x, t, lam):  # labels ignored: cond == uncond when lambda is shared
    return jnp.stack([jnp.sin(7 * lam), jnp.cos(5 * lam), lam], -1)[:, None, :] + 0.0 * x[..., None]
  mix = samplers.mixture(comp)
  plain = samplers.confidence_sample(jax.random.key(2), proc, mix, None, 64, 5, 3)
  cfg = samplers.confidence_sample(jax.random.key(2), proc, samplers.guided(mix, mix, 3.0), None,
                                   64, 5, 3)
  np.testing.assert_array_equal(plain, cfg)
  ramped = samplers.confidence_sample(jax.random.key(2), proc, mix, None, 64, 5, 3, uncond=mix,
                                      guidance=3.0)
  np.testing.assert_array_equal(plain, ramped)


def test_confidence_guidance_ramps_from_zero():
  """w_k = w k / (N - 1): the first step is unguided, so with N = 1 any
  unconditional denoiser leaves the output unchanged, while at N = 2 a
  strongly different one changes the second step."""
  proc = processes.Masked(3, "arccos")
  cond = samplers.product(lambda p, x, t: jnp.zeros(x.shape + (3,)) + jnp.array([1.0, 0.0, 0.0]))
  uncond = samplers.product(lambda p, x, t: jnp.zeros(x.shape + (3,)) + jnp.array([9.0, 0.0, 0.0]))
  args = (jax.random.key(0), proc, cond, None, 256, 4)
  np.testing.assert_array_equal(samplers.confidence_sample(*args, 1),
                                samplers.confidence_sample(*args, 1, uncond=uncond, guidance=5.0))
  a = np.asarray(samplers.confidence_sample(*args, 2))
  b = np.asarray(samplers.confidence_sample(*args, 2, uncond=uncond, guidance=5.0))
  # Guidance away from token 0 (w = 5 at the second step): fewer zeros.
  assert (b == 0).mean() < (a == 0).mean() - 0.1


def _counting(fn, calls):
  def counted(params, x, t, key):
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
    out = samplers.sample(jax.random.key(0), proc, _counting(samplers.product(ideal), calls), p,
                          8, D, num_steps)
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
  got = samplers.sample(jax.random.key(num_steps), proc, samplers.product(ideal), p, n, D,
                        num_steps)
  hist = np.bincount(exact.state_index(np.asarray(got), S), minlength=S ** D)
  times, t_final = samplers.schedule(proc, num_steps)
  assert t_final == pytest.approx(0.01) and len(times) == num_steps
  assert samplers.schedule(proc, 1) == (pytest.approx([1.0]), 1.0)
  law, _ = exact.sampler_distribution(proc, lambda x, t, lam: ideal(p, x, t), D, times,
                                      final="argmax")
  assert_chi2(hist, law)
