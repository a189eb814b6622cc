"""Analytic x0-prediction samplers for product and mixture denoisers.

The samplers take any `denoisers.Denoiser` and call it as
`denoise(params, x_t, t, key)`: a product denoiser ignores the key; a
mixture student goes through `denoisers.mixture`, which draws one fresh
lambda per sample per call from that key; labels are bound beforehand
(`denoisers.with_labels`). Every loop is a `lax.fori_loop`, so the number
of steps does not grow the traced program.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import categorical
from mixture_dd.denoisers import Denoiser
from mixture_dd.processes import Process

GRIDS = ("uniform", "cosine")
FINALS = ("argmax", "sample", "none")


def _grid_frac(r, kind: str):
  """Fraction of the way from t_min to t_max at uniform progress r in [0, 1]."""
  if kind == "uniform":
    return r
  if kind == "cosine":
    return 1.0 - jnp.cos(0.5 * jnp.pi * r)
  raise ValueError(f"unknown grid {kind!r}; choose one of {GRIDS}")


def time_grid(
  num_steps: int, kind: str = "uniform", t_max: float = 1.0, t_min: float = 0.0
) -> jax.Array:
  """Descending times `[num_steps + 1]`: grid[0] = t_max, grid[-1] = t_min.

  "cosine" packs the steps toward the data end (t_min), where the
  remaining structure is decided.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if not 0.0 <= t_min < t_max <= 1.0:
    raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
  r = jnp.linspace(1.0, 0.0, num_steps + 1)
  return (t_min + (t_max - t_min) * _grid_frac(r, kind)).astype(jnp.float32)


# Where the analytic steps stop when a process does not reach its data end
# exactly (uniform, Gaussian CTMC): tauLDR's grid linspace(1, 0.01, N).
T_FINAL_NONMASKED = 0.01


def schedule(
  process: Process,
  num_steps: int,
  grid: str = "uniform",
  t_max: float = 1.0,
  t_min: float | None = None,
) -> tuple[np.ndarray, float]:
  """(analytic-step times `[M + 1]`, time of the final denoise) of an N-step run.

  Every N-step sampler makes exactly N network calls:
  * masked: N analytic steps on a grid from t_max to t_min (default 0),
    then a final denoise of any token still masked (none is, at t_min = 0:
    that call is skipped at run time);
  * uniform / Gaussian (tauLDR): N - 1 analytic steps on N grid points from
    t_max to t_min (default 0.01), then the argmax of p_{0|t_min}; N = 1 is
    the argmax at t_max.
  The exact toolkit (`scorers.exact_law`) reads the same schedule.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  masked = process.mask_id is not None
  if t_min is None:
    t_min = 0.0 if masked else T_FINAL_NONMASKED
  if masked:
    return np.asarray(time_grid(num_steps, grid, t_max, t_min), np.float64), t_min
  if num_steps == 1:
    return np.asarray([t_max], np.float64), t_max
  return np.asarray(time_grid(num_steps - 1, grid, t_max, t_min), np.float64), t_min


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


def _tempered(logits, temperature):
  """logits / temperature; None (the default everywhere) leaves them untouched."""
  return logits if temperature is None else logits / temperature


def run_steps(
  key, process: Process, denoiser: Denoiser, params, x, time_at, first, last, temperature=None
):
  """Runs analytic steps i = first .. last - 1, step i from time_at(i) to time_at(i + 1).

  x `[batch, D]` int32; `first` and `last` may be traced (one compiled
  program serves every number of steps). With `temperature` T, each x0 is
  drawn from softmax(logits / T). Returns x after the last step.
  """
  batch = x.shape[0]

  def body(i, carry):
    x, key = carry
    key, k_net, k_step = jax.random.split(key, 3)
    t = jnp.full((batch,), time_at(i))
    s = jnp.full((batch,), time_at(i + 1))
    logits = _tempered(denoiser(params, x, t, k_net), temperature)
    return analytic_step(k_step, process, x, t, s, logits), key

  x, _ = jax.lax.fori_loop(first, last, body, (x, key))
  return x


def finalize(
  key,
  process: Process,
  denoiser: Denoiser,
  params,
  x,
  t,
  mode: str = "argmax",
  temperature=None,
):
  """The last denoise at t_min: turns x_{t_min} into data values `[batch, D]`.

  "argmax" takes the most likely x0 per token (tauLDR; a temperature does
  not change it), "sample" draws it from softmax(logits / temperature)
  (MDLM's final denoise of leftover masks), "none" returns x unchanged. For
  the masked process only still-masked tokens change (carry-over).
  """
  if mode == "none":
    return x
  if mode not in FINALS:
    raise ValueError(f"unknown final step {mode!r}; choose one of {FINALS}")

  def denoise(x):
    k_net, k_draw = jax.random.split(key)
    logits = denoiser(params, x, jnp.full((x.shape[0],), t, jnp.float32), k_net)
    if mode == "argmax":
      x0 = jnp.argmax(logits, -1).astype(jnp.int32)
    else:
      x0 = categorical.sample(k_draw, _tempered(logits, temperature))
    if process.mask_id is not None:
      x0 = jnp.where(x == process.mask_id, x0, x)
    return x0

  if process.mask_id is None:
    return denoise(x)
  # Masked: nothing left to denoise is the usual case at t_min = 0; skip the call.
  return jax.lax.cond(jnp.any(x == process.mask_id), denoise, lambda x: x, x)


@functools.partial(
  jax.jit,
  static_argnames=(
    "process",
    "denoiser",
    "batch_size",
    "length",
    "grid",
    "t_max",
    "t_min",
    "final",
    "second",
  ),
)
def sample(
  key,
  process: Process,
  denoiser: Denoiser,
  params,
  batch_size: int,
  length: int,
  num_steps,
  grid: str = "uniform",
  t_max: float = 1.0,
  t_min: float | None = None,
  final: str = "argmax",
  second: Denoiser | None = None,
  second_params=None,
  second_steps=None,
  temperature=None,
):
  """N-step sampling from the prior: `[batch_size, length]` int32 data values.

  N network calls (see `schedule`). `num_steps` (and `second_steps`) are
  traced: one compiled program serves every N. With `second` and
  `second_steps` M, the last M network calls use `second` with
  `second_params` and the first N - M use `denoiser` (the hybrid: the
  student, then the teacher for the last M steps; tauLDR counts its final
  argmax as a teacher step). `process` and the denoisers are static: pass
  the same function objects to reuse the compiled program.

  `temperature` T > 0 (traced: one program serves every T) draws every x0
  from softmax(logits / T), for both denoisers; the default None leaves the
  logits untouched (the untempered program, T = 1, bit for bit). A final
  argmax does not depend on T.
  """
  masked = process.mask_id is not None
  if t_min is None:
    t_min = 0.0 if masked else T_FINAL_NONMASKED
  n = jnp.asarray(num_steps, jnp.int32)
  intervals = n if masked else n - 1  # analytic steps
  span = jnp.maximum(intervals, 1).astype(jnp.float32)
  time_at = lambda i: (
    t_min + (t_max - t_min) * _grid_frac(1.0 - i.astype(jnp.float32) / span, grid)
  ).astype(jnp.float32)
  t_final = jnp.where(intervals > 0, jnp.float32(t_min), jnp.float32(t_max))
  k_prior, k_a, k_b, k_final = jax.random.split(key, 4)
  x = process.prior_sample(k_prior, (batch_size, length))
  if second is None:
    x = run_steps(k_a, process, denoiser, params, x, time_at, 0, intervals, temperature)
    return finalize(k_final, process, denoiser, params, x, t_final, final, temperature)
  k1 = jnp.clip(n - jnp.asarray(second_steps, jnp.int32), 0, n)  # calls by `denoiser`
  x = run_steps(
    k_a, process, denoiser, params, x, time_at, 0, jnp.minimum(k1, intervals), temperature
  )
  x = run_steps(
    k_b,
    process,
    second,
    second_params,
    x,
    time_at,
    jnp.minimum(k1, intervals),
    intervals,
    temperature,
  )
  # The final call belongs to the first denoiser only if all N calls do.
  return jax.lax.cond(
    k1 >= n,
    lambda x: finalize(k_final, process, denoiser, params, x, t_final, final, temperature),
    lambda x: finalize(k_final, process, second, second_params, x, t_final, final, temperature),
    x,
  )


# ---------------------------------------------------------------------------
# MaskGIT's confidence sampler (masked process only).
# ---------------------------------------------------------------------------


def reveal_schedule(length: int, num_steps: int) -> list[int]:
  """Tokens revealed at each step under MaskGIT's arccos schedule.

  After step k of N, ceil(length * arccos(k / N) / (pi / 2)) tokens stay
  masked; 4 steps on 256 tokens reveal 41, 44, 53 and 118.
  """
  import math

  masked = [length] + [
    math.ceil(length * math.acos(k / num_steps) / (math.pi / 2) - 1e-9)
    for k in range(1, num_steps + 1)
  ]
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
  conditional and the unconditional pass (docs/method.md section 5).
  """

  def denoise(params, x, t, key, lam=None, labels=None):
    lc = jax.nn.log_softmax(cond(params, x, t, key), -1)
    lu = jax.nn.log_softmax(uncond(params, x, t, key), -1)
    return (1.0 + scale) * lc - scale * lu

  return denoise


def confidence_step(key, process: Process, x, logits, num_masked_after, temperature):
  """One MaskGIT step: reveal the most confident masked tokens.

  x `[batch, D]` with some tokens masked, logits `[batch, D, S]`,
  num_masked_after `[batch]` int (how many stay masked), temperature a
  scalar or `[batch]`. Every masked token gets a draw x0_hat ~ p(. | x); its
  confidence is log p(x0_hat) + temperature * Gumbel noise; the
  (#masked - num_masked_after) most confident masked tokens take their
  draws. Returns `[batch, D]` int32.
  """
  k_draw, k_conf = jax.random.split(key)
  is_mask = x == process.mask_id
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  x0 = categorical.sample(k_draw, logp)
  conf = jnp.take_along_axis(logp, x0[..., None], -1)[..., 0]
  temp = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (x.shape[0],))
  conf = conf + temp[:, None] * categorical.gumbel(k_conf, conf.shape)
  conf = jnp.where(is_mask, conf, jnp.inf)  # revealed tokens stay revealed
  # Rank 0 = most confident; the first (D - num_masked_after) positions end revealed.
  rank = jnp.argsort(jnp.argsort(-conf, axis=-1), axis=-1)
  keep = x.shape[1] - jnp.asarray(num_masked_after, jnp.int32)
  reveal = is_mask & (rank < keep[:, None])
  return jnp.where(reveal, x0, x)


@functools.partial(
  jax.jit,
  static_argnames=(
    "process",
    "denoiser",
    "batch_size",
    "length",
    "num_steps",
    "choice_temperature",
    "uncond",
  ),
)
def confidence_sample(
  key,
  process: Process,
  denoiser: Denoiser,
  params,
  batch_size: int,
  length: int,
  num_steps: int,
  choice_temperature: float = 4.5,
  uncond: Denoiser | None = None,
  guidance: float = 0.0,
):
  """MaskGIT sampling: `[batch_size, length]` int32 in N steps.

  At step k = 0 .. N - 1, `confidence_step` reveals the `reveal_schedule`
  count with Gumbel temperature choice_temperature * (1 - k / (N - 1))
  (annealed linearly to 0 at the last step, as MaskGIT). With `uncond`,
  classifier-free guidance with a scale ramped linearly from 0 to
  `guidance`: w_k = guidance * k / (N - 1); both passes get the same key,
  so a mixture draws the same lambda for both. A mixture denoiser draws a
  fresh lambda per sample per step.
  """
  if process.mask_id is None:
    raise ValueError("confidence_sample needs the masked process")
  counts = reveal_schedule(length, num_steps)
  masked_after = jnp.asarray(length - np.cumsum(counts), jnp.int32)  # after step k
  x = jnp.full((batch_size, length), process.mask_id, jnp.int32)
  ramp = 1.0 / max(num_steps - 1, 1)

  def body(k, carry):
    x, key = carry
    key, k_net, k_step = jax.random.split(key, 3)
    ratio = jnp.mean((x == process.mask_id).astype(jnp.float32), -1)
    t = _time_of_mask_ratio(process, ratio)
    logits = jax.nn.log_softmax(denoiser(params, x, t, k_net), -1)
    if uncond is not None:
      w = guidance * k * ramp
      logits = (1.0 + w) * logits - w * jax.nn.log_softmax(uncond(params, x, t, k_net), -1)
    temp = choice_temperature * (1.0 - k * ramp)
    n_after = jnp.full((batch_size,), masked_after[k])
    return confidence_step(k_step, process, x, logits, n_after, temp), key

  x, _ = jax.lax.fori_loop(0, num_steps, body, (x, key))
  return x
