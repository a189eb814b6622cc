"""Exact computations on tiny state spaces (|S|^D up to a few thousand).

Everything here is float64 numpy on the host: these are references, not
training code. States of S^D are enumerated in lexicographic order with the
first dimension most significant, so state index = sum_d x^d * S^(D-1-d).
"""

from __future__ import annotations

import numpy as np

FAMILIES = ("copies", "noisy_copies", "dirichlet", "markov")


def enumerate_states(num_values: int, length: int) -> np.ndarray:
  """All of S^D as an int array [S**D, D], lexicographic order."""
  if num_values**length > 2**22:
    raise ValueError(
      f"S^D = {num_values}^{length} is too large to enumerate; the exact "
      "toolkit is for tiny spaces (|S|^D up to a few thousand)."
    )
  grids = np.meshgrid(*[np.arange(num_values)] * length, indexing="ij")
  return np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.int64)


def state_index(x: np.ndarray, num_values: int) -> np.ndarray:
  """Inverse of `enumerate_states`: [..., D] int -> [...] index."""
  x = np.asarray(x)
  length = x.shape[-1]
  weights = num_values ** np.arange(length - 1, -1, -1)
  return (x * weights).sum(-1)


def make_family(
  name: str,
  num_values: int,
  length: int,
  seed: int = 0,
  noise: float = 0.1,
  concentration: float = 0.3,
) -> np.ndarray:
  """A named, seeded, strongly correlated distribution over S^D.

  Returns probabilities [S**D] (float64, sums to one).
    copies:       every dimension equal, uniform over the S diagonal states.
                  Not full support: see `ideal_marginals` for what the
                  ideal denoiser does off the support.
    noisy_copies: (1 - noise) * copies + noise * uniform over S^D.
    dirichlet:    one draw of Dirichlet(concentration) over all S^D states.
    markov:       a first-order chain x^1 -> x^2 -> ..., initial law and
                  transition rows drawn from Dirichlet(concentration).
  """
  states = enumerate_states(num_values, length)
  rng = np.random.default_rng(seed)
  if name in ("copies", "noisy_copies"):
    diag = (states == states[:, :1]).all(-1).astype(np.float64)
    p = diag / diag.sum()
    if name == "noisy_copies":
      p = (1.0 - noise) * p + noise / len(states)
  elif name == "dirichlet":
    p = rng.dirichlet(np.full(len(states), concentration))
    p = np.maximum(p, 1e-300)  # Dirichlet draws can underflow to exact zeros.
  elif name == "markov":
    init = rng.dirichlet(np.full(num_values, concentration))
    trans = rng.dirichlet(np.full(num_values, concentration), size=num_values)
    p = init[states[:, 0]]
    for d in range(1, length):
      p = p * trans[states[:, d - 1], states[:, d]]
    p = np.maximum(p, 1e-300)
  else:
    raise ValueError(f"unknown family {name!r}; choose one of {FAMILIES}")
  return p / p.sum()


# ---------------------------------------------------------------------------
# The exact ideal product denoiser.
# ---------------------------------------------------------------------------


def ideal_log_marginals(process, probs, length: int, x_t, t):
  """Exact per-dimension posteriors log q^d_{0|t}(a | x_t) of a known data law.

  probs `[S**D]` (over `enumerate_states(S, D)`), x_t `[batch, D]` int,
  t scalar or `[batch]`. Returns `[batch, D, S]` float32 log-probabilities:
  the best any product denoiser can do. Jittable, so it also serves as a
  teacher (`denoisers.from_function(lambda p, x, t: ideal_log_marginals(...))`).

  Off the support, where no x0 of the data can produce x_t (e.g. "copies"
  with two unmasked tokens that differ), q(x0 | x_t) is 0/0. We take the
  limit of smoothing the data with a vanishing uniform component: the data
  law is replaced by the uniform law over S^D for that x_t alone, so the
  masked process keeps unmasked tokens and makes masked ones uniform. A
  trained network's behaviour there is arbitrary; families with full
  support ("noisy_copies", "dirichlet", "markov") avoid the question.
  """
  import jax
  import jax.numpy as jnp

  from mixture_dd.categorical import NEG_INF

  s_vocab = process.vocab_size
  states = enumerate_states(s_vocab, length)
  onehot = jnp.asarray(np.eye(s_vocab, dtype=np.float32)[states])  # [M, D, S]
  x_t = jnp.asarray(x_t)
  t = jnp.asarray(t, jnp.float32)
  trans = process.transition(jnp.zeros_like(t), t)  # [(B,) K, K], row = x0
  log_tr = jnp.log(jnp.maximum(trans[..., :s_vocab, :], 1e-30))  # [(B,) S, K]
  log_tr = jnp.where(trans[..., :s_vocab, :] > 0, log_tr, NEG_INF)
  if log_tr.ndim == 2:
    sel = jnp.take(log_tr, x_t, axis=1)  # [S, B, D]
    sel = jnp.moveaxis(sel, 0, -1)  # [B, D, S]
  else:
    sel = jnp.take_along_axis(log_tr[:, None, :, :], x_t[:, :, None, None], axis=-1)[..., 0]
  log_lik = jnp.einsum("bda,mda->bm", sel, onehot)  # [B, M]
  logp = jnp.log(jnp.maximum(jnp.asarray(probs, jnp.float32), 1e-37))
  logw = log_lik + logp
  off_support = jnp.max(logw, -1, keepdims=True) < -1e5
  post = jax.nn.softmax(jnp.where(off_support, log_lik, logw), -1)
  marg = jnp.einsum("bm,mda->bda", post, onehot)
  return jnp.where(marg > 0, jnp.log(jnp.maximum(marg, 1e-37)), NEG_INF)


# ---------------------------------------------------------------------------
# Exact distributions of N-step samplers, by pushing the whole law through
# each step's kernel.
# ---------------------------------------------------------------------------


def _push(weights, kernel, num_states, chunk_elems=1 << 22):
  """sum_i w_i prod_d kernel[i, d, x^d] for every x in K^D -> `[K**D]`."""
  n, length, _ = kernel.shape
  out = np.zeros(num_states**length)
  step = max(1, chunk_elems // num_states**length)
  for lo in range(0, n, step):
    k = kernel[lo : lo + step]
    acc = weights[lo : lo + step, None] * k[:, 0, :]
    for d in range(1, length):
      acc = (acc[:, :, None] * k[:, d, None, :]).reshape(acc.shape[0], -1)
    out += acc.sum(0)
  return out


def _posterior_table(process, s, t):
  """float64 `[K, S, K]`: q(x_s = b | x_t = i, x0 = a) for all (i, a, b)."""
  import jax.numpy as jnp

  k, sv = process.num_states, process.vocab_size
  xt = jnp.repeat(jnp.arange(k), sv)[None, :]
  a = jnp.tile(jnp.arange(sv), k)[None, :]
  lp = np.asarray(process.log_posterior(xt, a, s, t), np.float64)[0]
  p = np.exp(lp).reshape(k, sv, k)
  return p / p.sum(-1, keepdims=True)


def _probs(log_marginals):
  lm = np.asarray(log_marginals, np.float64)
  p = np.exp(lm - lm.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def latent_nodes(num_nodes: int, latent_dim: int = 1):
  """Nodes and weights for integrating over lambda ~ U[0, 1]^latent_dim.

  latent_dim 1: `num_nodes` Gauss-Legendre nodes on [0, 1], `[n]` and `[n]`.
  latent_dim k > 1: a centred rank-1 lattice (quasi-Monte Carlo): the
  `num_nodes` points of `networks.latent_lattice` shifted by 1 / (2 n),
  `[n, k]`, equal weights 1 / n; every coordinate's projection is the
  n-point midpoint rule. Not a tensor product of Gauss-Legendre rules: a
  trained student depends on lambda through sinusoids of 1000 lambda,
  faster than a few nodes per coordinate resolve. Measured on a
  tiny_distill student with k = 4 (exact TV at N = 1): products of 2 to 6
  nodes per coordinate (16 to 1296 nodes) gave 0.17 to 0.28 without
  settling; lattices of 1024, 4096 and 16384 points gave 0.145, 0.1533,
  0.1528. So give a k > 1 student a few thousand nodes (the cost is linear
  in num_nodes).
  """
  if num_nodes < 1 or latent_dim < 1:
    raise ValueError(f"need num_nodes >= 1 and latent_dim >= 1, got {num_nodes}, {latent_dim}")
  if latent_dim == 1:
    x, w = np.polynomial.legendre.leggauss(num_nodes)
    return 0.5 * (x + 1.0), 0.5 * w
  from mixture_dd import networks  # jax/flax: only for a vector latent

  nodes = (networks.latent_lattice(num_nodes, latent_dim) + 0.5 / num_nodes) % 1.0
  return nodes, np.full(num_nodes, 1.0 / num_nodes)


def sampler_distribution(
  process,
  log_marginals_fn,
  length: int,
  times,
  final: str = "none",
  num_latent_nodes: int | None = None,
  latent_dim: int | None = None,
):
  """The exact law over S^D of an N-step analytic sampler.

  log_marginals_fn(x [n, D] int32, t float, lam) -> `[n, D, S]`
    the denoiser's log-probabilities (any normalisation) at every state
    given; lam is None for a product denoiser, a float for a mixture with
    latent_dim 1, a `[k]` array for latent_dim k > 1.
  times: the descending grid `[N + 1]` (see `samplers.time_grid`).
  final: "none" (the grid must end where every token is a data value, e.g.
    t = 0 for the masked process), "argmax" or "sample", as in
    `samplers.finalize`.
  num_latent_nodes: None for a product denoiser; else lambda ~ U[0, 1]^k is
    integrated at every step with that many nodes: Gauss-Legendre (k = 1),
    a rank-1 lattice (k > 1, see `latent_nodes`).
  latent_dim: k; None takes `log_marginals_fn.latent_dim` (the views of
    `denoisers.exact_view` carry their network's), 1 when it has none.
  Returns (probs `[S**D]`, leftover) where leftover is the mass that ended
  on non-data states (non-zero only with final="none" stopped too early).
  """
  k = process.num_states
  states = enumerate_states(k, length)
  prior = np.exp(np.asarray(process.log_prior(), np.float64))
  dist = np.prod(prior[states], axis=-1)
  if num_latent_nodes is None:
    nodes, node_w = [None], np.ones(1)
  else:
    if latent_dim is None:
      latent_dim = int(getattr(log_marginals_fn, "latent_dim", 1))
    nodes, node_w = latent_nodes(num_latent_nodes, latent_dim)
  times = np.asarray(times, np.float64)
  for t, s in zip(times[:-1], times[1:]):
    table = _posterior_table(process, float(s), float(t))
    live = np.nonzero(dist > 0)[0]
    x = states[live]
    new = np.zeros_like(dist)
    for lam, w in zip(nodes, node_w):
      m = _probs(log_marginals_fn(x.astype(np.int32), float(t), lam))  # [n, D, S]
      kern = np.einsum("nda,ndab->ndb", m, table[x])
      new += w * _push(dist[live], kern, k)
    dist = new
  return _finalize_distribution(
    process, log_marginals_fn, states, dist, float(times[-1]), final, nodes, node_w, length
  )


def _finalize_distribution(process, fn, states, dist, t, final, nodes, node_w, length):
  sv = process.vocab_size
  is_data = (states < sv).all(-1)
  out = np.zeros(sv**length)
  if final == "none":
    out += dist[is_data]
    return out, float(dist[~is_data].sum())
  live = np.nonzero(dist > 0)[0]
  x = states[live]
  keep = x != process.mask_id if process.mask_id is not None else np.zeros_like(x, bool)
  for lam, w in zip(nodes, node_w):
    m = _probs(fn(x.astype(np.int32), t, lam))
    if final == "argmax":
      kern = np.eye(sv)[m.argmax(-1)]
    elif final == "sample":
      kern = m
    else:
      raise ValueError(f"unknown final {final!r}; choose none, argmax or sample")
    kern = np.where(keep[..., None], np.eye(sv)[np.minimum(x, sv - 1)], kern)
    out += w * _push(dist[live], kern, sv)
  return out, 0.0


def total_variation(p, q) -> float:
  return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def kl_divergence(p, q, eps: float = 1e-300) -> float:
  """KL(p || q) in nats; inf where q misses mass that p has."""
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  on = p > 0
  if np.any(q[on] <= 0):
    return float("inf")
  return float(np.sum(p[on] * (np.log(p[on]) - np.log(np.maximum(q[on], eps)))))
