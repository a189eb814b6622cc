"""Exact categorical draws in float32.

Gumbel-max with a float32 uniform is biased: u has 24 bits, so the Gumbel
noise -log(-log u) is capped near 16.6 and tokens whose probability is below
about 1e-7 of the top token are under-drawn (it acts like a lowered
temperature on large vocabularies; a known complaint in discrete flow
matching). We instead use the exponential race, argmin_k E_k / p_k with
E_k ~ Exp(1), which is Gumbel-max with G = -log E, and draw E with 64 random
bits: V = (n + 1/2) 2^-64 for a uniform 64-bit n, E = -log1p(-V). Both V and
its complement 1 - V (from the complemented bits) keep full float32 relative
precision, so E is accurate from about 5e-20 up to 44: the truncation is at
probability 2^-64 instead of 2^-24. No float64 (and no jax_enable_x64) needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Our "impossible": the log-probability (or logit) of a value that cannot
# occur. Large but finite, never -inf, so that 0 * log 0 terms in KLs and
# log-softmax stay finite (0 * -inf would give NaN); `sample` never draws it.
NEG_INF = -1e6

_TWO_M32 = 2.0**-32


def _uniform64(hi, lo):
  """(n + 1/2) 2^-64 for n = hi 2^32 + lo, with float32 relative precision."""
  return hi.astype(jnp.float32) * _TWO_M32 + (lo.astype(jnp.float32) + 0.5) * (_TWO_M32 * _TWO_M32)


def exponential(key, shape):
  """Exp(1) draws [shape] in float32, accurate deep into both tails."""
  bits = jax.random.bits(key, (2,) + tuple(shape), jnp.uint32)
  return exponential_from_bits(bits[0], bits[1])


def exponential_from_bits(hi, lo):
  """Deterministic map from two uint32 words to an Exp(1) draw."""
  v = _uniform64(hi, lo)
  u = _uniform64(~hi, ~lo)  # = 1 - v exactly, with its own full precision
  return jnp.where(v < 0.5, -jnp.log1p(-v), -jnp.log(u))


def gumbel(key, shape):
  return -jnp.log(exponential(key, shape))


def sample(key, logits, axis=-1):
  """One draw per row of unnormalised `logits` [..., K] -> int32 [...].

  Entries at NEG_INF (our "impossible") are never drawn.
  """
  logits = jnp.moveaxis(jnp.asarray(logits, jnp.float32), axis, -1)
  g = gumbel(key, logits.shape)
  return jnp.argmax(logits + g, axis=-1).astype(jnp.int32)
