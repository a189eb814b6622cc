"""Analytic x0-prediction samplers for product and mixture denoisers.

A *denoiser* here is a function `(params, x_t [batch, D] int32, t [batch]
float32, key) -> logits [batch, D, S]` over the data values. Parameters are
an explicit (traced) argument so that jitted samplers never bake weights in
as constants. The key is what makes a mixture a mixture: `mixture(fn)` draws
one fresh lambda ~ U[0, 1] per sample per call (shared by all D dimensions)
and evaluates the product component `fn(params, x_t, t, lam)`.
`product(fn)` ignores the key. Every loop is a
`lax.fori_loop`, so the number of steps does not grow the traced program.
"""
from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import categorical
from mixture_dd.processes import Process

Denoiser = Callable[..., jax.Array]  # (params, x_t, t, key) -> logits
GRIDS = ("uniform", "cosine")
FINALS = ("argmax", "sample", "none")


def product(fn: Callable[..., jax.Array]) -> Denoiser:
  """A product denoiser `fn(params, x_t, t) -> logits` as a sampler denoiser."""
  return lambda params, x, t, key: fn(params, x, t)


def mixture(fn: Callable[..., jax.Array]) -> Denoiser:
  """A mixture `fn(params, x_t, t, lam) -> logits`: fresh lambda per sample per call."""
  def denoise(params, x, t, key):
    lam = jax.random.uniform(key, (x.shape[0],), jnp.float32)
    return fn(params, x, t, lam)
  return denoise


def time_grid(num_steps: int, kind: str = "uniform", t_max: float = 1.0,
              t_min: float = 0.0) -> jax.Array:
  """Descending times `[num_steps + 1]`: grid[0] = t_max, grid[-1] = t_min.

  "cosine" packs the steps toward the data end (t_min), where the
  remaining structure is decided.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0.0 <= t_min < t_max <= 1.0:
    raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
  r = jnp.linspace(1.0, 0.0, num_steps + 1)
  if kind == "uniform":
    frac = r
  elif kind == "cosine":
    frac = 1.0 - jnp.cos(0.5 * jnp.pi * r)
  else:
    raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}")
  return (t_min + (t_max - t_min) * frac).astype(jnp.float32)


def step_log_kernel(process: Process, x_t, t, s, logits):
  """Exact per-dimension one-step law log k^d(x_s^d | x_t), `[batch, D, K]`.

  k^d(b | x_t) = sum_a p^d(a | x_t) q(x_s^d = b | x_t^d, x0^d = a): what
  `analytic_step` draws from, marginally in each dimension.
  """
  s_vocab = logits.shape[-1]
  logp0 = jax.nn.log_softmax(logits.astype(jnp.float32), -1)  # [B, D, S]
  def post(a):
    return process.log_posterior(x_t, jnp.full_like(x_t, a), s, t)  # [B, D, K]
  logq = jax.vmap(post, out_axes=-2)(jnp.arange(s_vocab))  # [B, D, S, K]
  return jax.nn.logsumexp(logp0[..., None] + logq, axis=-2)


def analytic_step(key, process: Process, x_t, t, s, logits):
  """One step t -> s: x0_hat^d ~ p^d(. | x_t), then x_s^d ~ q(. | x_t^d, x0_hat^d).

  x_t `[batch, D]` int32, t and s scalars or `[batch]`, logits `[batch, D, S]`.
  Returns x_s `[batch, D]` int32.
  """
  chex.assert_rank(x_t, 2)
  chex.assert_shape(logits, (*x_t.shape, process.vocab_size))
  k_x0, k_xs = jax.random.split(key)
  x0_hat = categorical.sample(k_x0, logits)
  return categorical.sample(k_xs, process.log_posterior(x_t, x0_hat, s, t))


def run_steps(key, process: Process, denoiser: Denoiser, params, x, times):
  """Runs the analytic sampler from x at times[0] through every time in `times`.

  x `[batch, D]` int32, times `[n + 1]` descending. Returns x at times[-1].
  """
  batch = x.shape[0]

  def body(i, carry):
    x, key = carry
    key, k_net, k_step = jax.random.split(key, 3)
    t = jnp.full((batch,), times[i])
    s = jnp.full((batch,), times[i + 1])
    logits = denoiser(params, x, t, k_net)
    return analytic_step(k_step, process, x, t, s, logits), key

  x, _ = jax.lax.fori_loop(0, times.shape[0] - 1, body, (x, key))
  return x


def finalize(key, process: Process, denoiser: Denoiser, params, x, t,
             mode: str = "argmax"):
  """The last denoise at t_min: turns x_{t_min} into data values `[batch, D]`.

  "argmax" takes the most likely x0 per token (tauLDR), "sample" draws it
  (MDLM's final denoise of leftover masks), "none" returns x unchanged. For
  the masked process only still-masked tokens change (carry-over).
  """
  if mode == "none":
    return x
  if mode not in FINALS:
    raise ValueError(f"unknown final step {mode!r}; choose one of {FINALS}")
  k_net, k_draw = jax.random.split(key)
  logits = denoiser(params, x, jnp.full((x.shape[0],), t, jnp.float32), k_net)
  if mode == "argmax":
    x0 = jnp.argmax(logits, -1).astype(jnp.int32)
  else:
    x0 = categorical.sample(k_draw, logits)
  if process.mask_id is not None:
    x0 = jnp.where(x == process.mask_id, x0, x)
  return x0


@functools.partial(
    jax.jit, static_argnames=("process", "denoiser", "batch_size", "length",
                              "num_steps", "grid", "t_max", "t_min", "final",
                              "second", "num_first"))
def sample(key, process: Process, denoiser: Denoiser, params, batch_size: int,
           length: int, num_steps: int, grid: str = "uniform", t_max: float = 1.0,
           t_min: float = 0.0, final: str = "argmax", second: Denoiser | None = None,
           second_params=None, num_first: int | None = None):
  """N-step sampling from the prior: `[batch_size, length]` int32 data values.

  With `second` and `num_first` K, the first K steps use `denoiser` and the
  remaining N - K use `second` with `second_params` (the hybrid
  student-then-teacher schedule); the final denoise uses the last one that
  ran. `process` and the denoisers are static: pass the same function objects
  to reuse the compiled program.
  """
  times = time_grid(num_steps, grid, t_max, t_min)
  k_prior, k_a, k_b, k_final = jax.random.split(key, 4)
  x = process.prior_sample(k_prior, (batch_size, length))
  last, last_params = denoiser, params
  if second is None:
    x = run_steps(k_a, process, denoiser, params, x, times)
  else:
    if num_first is None or not 0 <= num_first <= num_steps:
      raise ValueError(f"hybrid sampling needs 0 <= num_first <= num_steps={num_steps}, "
                       f"got {num_first}")
    x = run_steps(k_a, process, denoiser, params, x, times[:num_first + 1])
    x = run_steps(k_b, process, second, second_params, x, times[num_first:])
    if num_first < num_steps:
      last, last_params = second, second_params
  return finalize(k_final, process, last, last_params, x, t_min, final)


# ---------------------------------------------------------------------------
# MaskGIT's confidence sampler (masked process only).
# ---------------------------------------------------------------------------


def reveal_schedule(length: int, num_steps: int) -> list[int]:
  """Tokens revealed at each step under MaskGIT's arccos schedule.

  After step k of N, ceil(length * arccos(k / N) / (pi / 2)) tokens stay
  masked; 4 steps on 256 tokens reveal 41, 44, 53 and 118.
  """
  import math
  masked = [length] + [math.ceil(length * math.acos(k / num_steps) / (math.pi / 2) - 1e-9)
                       for k in range(1, num_steps + 1)]
  return [masked[k] - masked[k + 1] for k in range(num_steps)]


def _time_of_mask_ratio(process, ratio):
  """t with 1 - alpha(t) = ratio, by bisection (any masked schedule)."""
  lo, hi = jnp.zeros_like(ratio), jnp.ones_like(ratio)
  for _ in range(30):
    mid = 0.5 * (lo + hi)
    below = (1.0 - process.alpha(mid)) < ratio
    lo, hi = jnp.where(below, mid, lo), jnp.where(below, hi, mid)
  return 0.5 * (lo + hi)


def guided(cond: Denoiser, uncond: Denoiser, scale: float) -> Denoiser:
  """Classifier-free guidance: (1 + w) log p(.|c) - w log p(.).

  Both passes get the same key, so a mixture draws the SAME lambda for the
  conditional and the unconditional pass (method.md section 5).
  """
  def denoise(params, x, t, key):
    lc = jax.nn.log_softmax(cond(params, x, t, key), -1)
    lu = jax.nn.log_softmax(uncond(params, x, t, key), -1)
    return (1.0 + scale) * lc - scale * lu
  return denoise


@functools.partial(jax.jit, static_argnames=("process", "denoiser", "batch_size", "length",
                                              "num_steps", "choice_temperature"))
def confidence_sample(key, process: Process, denoiser: Denoiser, params, batch_size: int,
                      length: int, num_steps: int, choice_temperature: float = 4.5):
  """MaskGIT sampling: `[batch_size, length]` int32 in N steps.

  At step k every masked token gets a draw x0_hat ~ p(. | x); its confidence
  is log p(x0_hat) plus Gumbel noise scaled by choice_temperature * (1 - k/N)
  (annealed linearly to 0); the `reveal_schedule` count of most confident
  masked tokens is revealed. A mixture denoiser draws a fresh lambda per
  sample per step. Wrap with `guided` for classifier-free guidance.
  """
  if process.mask_id is None:
    raise ValueError("confidence_sample needs the masked process")
  counts = reveal_schedule(length, num_steps)
  still_masked = jnp.asarray(np.cumsum([0] + counts), jnp.int32)  # revealed before step k
  x = jnp.full((batch_size, length), process.mask_id, jnp.int32)

  def body(k, carry):
    x, key = carry
    key, k_net, k_draw, k_conf = jax.random.split(key, 4)
    is_mask = x == process.mask_id
    ratio = jnp.mean(is_mask.astype(jnp.float32), -1)
    t = _time_of_mask_ratio(process, ratio)
    logits = denoiser(params, x, t, k_net)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    x0 = categorical.sample(k_draw, logp)
    conf = jnp.take_along_axis(logp, x0[..., None], -1)[..., 0]
    temp = choice_temperature * (1.0 - (k + 1) / num_steps)
    conf = conf + temp * categorical.gumbel(k_conf, conf.shape)
    conf = jnp.where(is_mask, conf, jnp.inf)  # revealed tokens stay revealed
    # Keep the (already revealed + newly revealed) most confident tokens.
    keep = still_masked[k + 1]
    rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)
    reveal = is_mask & (rank < keep)
    return jnp.where(reveal, x0, x), key

  x, _ = jax.lax.fori_loop(0, num_steps, body, (x, key))
  return x
