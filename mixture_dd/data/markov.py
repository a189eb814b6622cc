"""A synthetic first-order Markov chain with exact likelihood and entropy rate.

Everything is float64 numpy on the host: the chain is a reference whose
negative log-likelihood per token a trained model can be compared against.
"""

from __future__ import annotations

import numpy as np

_FLOOR = 1e-6


def make_chain(
  vocab_size: int, seed: int, concentration: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
  """A seeded, strongly correlated chain with full support.

  Rows are drawn from Dirichlet(concentration); a small concentration puts
  most mass on few successors (strong correlations), and the clip at 1e-6
  keeps every sequence possible so log-likelihoods stay finite.

  Returns:
    init [S] and trans [S, S] (trans[a, b] = P(x_{k+1} = b | x_k = a)),
    float64, rows summing to one.
  """
  if vocab_size < 2:
    raise ValueError(f"vocab_size must be >= 2, got {vocab_size}.")
  if concentration <= 0:
    raise ValueError(f"concentration must be > 0, got {concentration}.")
  rng = np.random.default_rng(seed)
  init = rng.dirichlet(np.full(vocab_size, concentration))
  trans = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
  init = np.maximum(init, _FLOOR)
  trans = np.maximum(trans, _FLOOR)
  return init / init.sum(), trans / trans.sum(-1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
  """Shannon entropy in nats along the last axis; 0 log 0 = 0."""
  logp = np.log(np.where(p > 0, p, 1.0))
  return -(p * logp).sum(-1)


def entropy_rate(init: np.ndarray, trans: np.ndarray, length: int) -> float:
  """Exact per-token entropy H(X_1..X_D) / D in nats.

  The chain need not start in its stationary law, so each conditional
  entropy H(X_{k+1} | X_k) is weighted by the exact marginal of X_k.
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}.")
  row_entropy = _entropy(trans)  # [S]: H(X_{k+1} | X_k = a).
  marginal = np.asarray(init, np.float64)
  total = float(_entropy(marginal))
  for _ in range(length - 1):
    total += float(marginal @ row_entropy)
    marginal = marginal @ trans
  return total / length


def log_prob(x: np.ndarray, init: np.ndarray, trans: np.ndarray) -> np.ndarray:
  """Exact log-likelihood of sequences x [B, D] (int) -> [B] float64."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"x must have shape [batch, length], got {x.shape}.")
  num_values = len(init)
  if x.size and (x.min() < 0 or x.max() >= num_values):
    raise ValueError(
      f"x has values in [{x.min()}, {x.max()}], outside the chain's vocabulary [0, {num_values})."
    )
  lp = np.log(init)[x[:, 0]]
  lp = lp + np.log(trans)[x[:, :-1], x[:, 1:]].sum(-1)
  return lp.astype(np.float64)


def sample(
  rng: np.random.Generator, n: int, length: int, init: np.ndarray, trans: np.ndarray
) -> np.ndarray:
  """n i.i.d. sequences [n, D] int32 by inverse-CDF sampling per step."""
  if length < 1 or n < 0:
    raise ValueError(f"need n >= 0 and length >= 1, got n={n}, length={length}.")
  num_values = len(init)
  out = np.empty((n, length), np.int32)
  # Inverse CDF, vectorised over the batch; the clip guards against a
  # uniform draw just above the last cumulative sum in floating point.
  out[:, 0] = np.minimum(
    np.searchsorted(np.cumsum(init), rng.random(n), side="right"), num_values - 1
  )
  cdf = np.cumsum(trans, axis=-1)  # [S, S]
  for k in range(1, length):
    rows = cdf[out[:, k - 1]]  # [n, S]
    u = rng.random((n, 1))
    out[:, k] = np.minimum((rows <= u).sum(-1), num_values - 1)
  return out


def marginals(init: np.ndarray, trans: np.ndarray, length: int) -> np.ndarray:
  """Exact per-position marginals P(X_d = a) = (init @ trans^d)[a]: `[D, S]` float64.

  The law of one step of an ideal product sampler from all-mask (its
  product over positions), and the reference for position-wise statistics.
  """
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}.")
  out = np.empty((length, len(init)), np.float64)
  out[0] = init
  for d in range(1, length):
    out[d] = out[d - 1] @ trans
  return out
