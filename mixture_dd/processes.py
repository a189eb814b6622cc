"""Forward noising processes of discrete diffusion, behind one interface.

Time t in [0, 1]: t = 0 is data, t = 1 is noise. Every process is independent
across dimensions, so everything here acts on one token at a time and
broadcasts over any leading batch shape.

Conventions shared by all processes:
  * `num_states` K: the token alphabet the network sees (data values plus the
    mask id for the masked process).
  * `vocab_size` S: the data values, the alphabet of x0 and of the denoiser's
    logits. Mask id (masked process only) = S.
  * Times `s`, `t` are scalars or one time per example `[batch]`, where the
    token arrays are `[batch, ...]`.
  * Log-probabilities use a large finite negative (`categorical.NEG_INF`,
    -1e6) for impossible states, never -inf, so that 0 * log 0 terms in KLs
    stay finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import categorical
from mixture_dd.categorical import NEG_INF

_TINY = 1e-30

# ---------------------------------------------------------------------------
# Schedules: alpha_t = probability that a token is still clean at time t.
# ---------------------------------------------------------------------------


def _loglinear(t, eps=1e-3):
  return 1.0 - (1.0 - eps) * t


def _linear(t):
  return 1.0 - t


def _cosine(t):
  # MD4's cosine schedule: masking ratio cos(pi/2 * progress), progress = 1-t.
  return 1.0 - jnp.cos(0.5 * jnp.pi * (1.0 - t))


def _arccos(t):
  # MaskGIT's arccos masking ratio g(r) = arccos(r) / (pi/2), progress r = 1-t.
  return 1.0 - jnp.arccos(jnp.clip(1.0 - t, -1.0, 1.0)) / (0.5 * jnp.pi)


SCHEDULES: dict[str, Callable] = {
  "loglinear": _loglinear,
  "linear": _linear,
  "cosine": _cosine,
  "arccos": _arccos,
}


def get_schedule(name: str) -> Callable:
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
  return SCHEDULES[name]


def _bcast(t, x):
  """Time `[]` or `[batch]` -> broadcastable against tokens `[batch, ...]`."""
  t = jnp.asarray(t, jnp.float32)
  if t.ndim == 0:
    return t
  if t.ndim != 1 or t.shape[0] != x.shape[0]:
    raise ValueError(
      f"times must be a scalar or one per example [batch={x.shape[0]}]; got shape {t.shape}"
    )
  return t.reshape(t.shape + (1,) * (x.ndim - 1))


def _safe_log(p):
  return jnp.where(p > 0, jnp.log(jnp.maximum(p, _TINY)), NEG_INF)


# ---------------------------------------------------------------------------
# The interface.
# ---------------------------------------------------------------------------


class Process:
  """A per-dimension forward process. Subclasses implement the methods below."""

  name: str
  num_states: int
  vocab_size: int
  mask_id: int | None = None

  def log_q_t0(self, x0, t):
    """log q_{t|0}(. | x0): x0 `[batch, ...]` int -> `[batch, ..., K]`."""
    raise NotImplementedError

  def transition(self, s, t):
    """q_{t|s} as a matrix `[..., K, K]` (row = x_s, column = x_t), s <= t."""
    raise NotImplementedError

  def log_posterior(self, x_t, x0, s, t):
    """log q_{s|t,0}(. | x_t, x0): int `[batch, ...]` x2 -> `[batch, ..., K]`."""
    raise NotImplementedError

  def prior_sample(self, key, shape):
    """Draw x_1 of the given shape (int32)."""
    raise NotImplementedError

  def log_prior(self):
    """log p(x_1) per token: `[K]`."""
    raise NotImplementedError

  def sample_xt(self, key, x0, t):
    """x_t ~ q_{t|0}(. | x0): `[batch, ...]` int32."""
    return categorical.sample(key, self.log_q_t0(x0, t))

  def check_tokens(self, x, what="tokens"):
    """Host-side validation with an error that names the fix."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{what} must be integers, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= self.num_states):
      raise ValueError(
        f"{what} out of range [0, {self.num_states}) for the {self.name} process "
        f"(vocab_size={self.vocab_size}); got min {x.min()}, max {x.max()}. "
        "Set config.process.vocab_size to the data's vocabulary size."
      )


@dataclasses.dataclass(frozen=True, eq=False)
class Masked(Process):
  """Absorbing ("masked") diffusion: a token is clean w.p. alpha_t, else MASK."""

  vocab_size: int
  schedule: str = "loglinear"
  name: str = "masked"

  def __post_init__(self):
    get_schedule(self.schedule)

  @property
  def num_states(self):
    return self.vocab_size + 1

  @property
  def mask_id(self):
    return self.vocab_size

  def alpha(self, t):
    return get_schedule(self.schedule)(jnp.asarray(t, jnp.float32))

  def log_q_t0(self, x0, t):
    a = self.alpha(_bcast(t, x0))[..., None]
    onehot = jax.nn.one_hot(x0, self.num_states, dtype=jnp.float32)
    maskhot = jax.nn.one_hot(jnp.full_like(x0, self.mask_id), self.num_states)
    return _safe_log(a * onehot + (1.0 - a) * maskhot)

  def transition(self, s, t):
    s = jnp.asarray(s, jnp.float32)[..., None, None]
    t = jnp.asarray(t, jnp.float32)[..., None, None]
    keep = self.alpha(t) / jnp.maximum(self.alpha(s), _TINY)
    eye = jnp.eye(self.num_states)
    to_mask = jnp.zeros((self.num_states,)).at[self.mask_id].set(1.0)
    m = keep * eye + (1.0 - keep) * to_mask[None, :]
    # The mask state is absorbing.
    return m.at[..., self.mask_id, :].set(to_mask)

  def log_posterior(self, x_t, x0, s, t):
    a_s = self.alpha(_bcast(s, x_t))
    a_t = self.alpha(_bcast(t, x_t))
    p_unmask = (a_s - a_t) / jnp.maximum(1.0 - a_t, _TINY)
    p_unmask = jnp.clip(p_unmask, 0.0, 1.0)[..., None]
    onehot0 = jax.nn.one_hot(x0, self.num_states)
    maskhot = jax.nn.one_hot(jnp.full_like(x_t, self.mask_id), self.num_states)
    masked = p_unmask * onehot0 + (1.0 - p_unmask) * maskhot
    kept = jax.nn.one_hot(x_t, self.num_states)
    is_mask = (x_t == self.mask_id)[..., None]
    return _safe_log(jnp.where(is_mask, masked, kept))

  def prior_sample(self, key, shape):
    del key
    return jnp.full(shape, self.mask_id, jnp.int32)

  def log_prior(self):
    return _safe_log(jax.nn.one_hot(self.mask_id, self.num_states))


class _MatrixProcess(Process):
  """Processes whose q_{t|s} is a dense K x K matrix; posteriors by Bayes."""

  def log_q_t0(self, x0, t):
    _bcast(t, x0)  # a scalar or one time per example, as for Masked
    m = self.transition(jnp.zeros_like(jnp.asarray(t, jnp.float32)), t)
    return _safe_log(_rows(m, x0))

  def log_posterior(self, x_t, x0, s, t):
    # q(x_s | x_t, x0) ∝ q_{s|0}(x_s | x0) q_{t|s}(x_t | x_s).
    _bcast(s, x_t)
    _bcast(t, x_t)
    s = jnp.asarray(s, jnp.float32)
    q_s0 = _rows(self.transition(jnp.zeros_like(s), s), x0)
    q_ts = _rows(jnp.swapaxes(self.transition(s, t), -1, -2), x_t)
    joint = q_s0 * q_ts
    # 1e-9 keeps the ratio defined where float32 underflows (docs/method.md, sec. 1).
    joint = joint + 1e-9 * jnp.sum(joint, -1, keepdims=True) + _TINY
    return jnp.log(joint / jnp.sum(joint, -1, keepdims=True))


def _rows(m, idx):
  """Rows of per-example matrices: m `[K,K]` or `[batch,K,K]`, idx `[batch, ...]`."""
  if m.ndim == 2:
    return m[idx]
  b = idx.shape[0]
  flat = idx.reshape(b, -1)
  out = m[jnp.arange(b)[:, None], flat]
  return out.reshape(idx.shape + (m.shape[-1],))


@dataclasses.dataclass(frozen=True, eq=False)
class Uniform(_MatrixProcess):
  """Uniform diffusion: q_{t|0} = alpha_t I + (1 - alpha_t) 11^T / S."""

  vocab_size: int
  schedule: str = "linear"
  name: str = "uniform"

  def __post_init__(self):
    get_schedule(self.schedule)

  @property
  def num_states(self):
    return self.vocab_size

  def alpha(self, t):
    return get_schedule(self.schedule)(jnp.asarray(t, jnp.float32))

  def transition(self, s, t):
    s = jnp.asarray(s, jnp.float32)[..., None, None]
    t = jnp.asarray(t, jnp.float32)[..., None, None]
    keep = self.alpha(t) / jnp.maximum(self.alpha(s), _TINY)
    k = self.num_states
    return keep * jnp.eye(k) + (1.0 - keep) / k

  def prior_sample(self, key, shape):
    return jax.random.randint(key, shape, 0, self.num_states, jnp.int32)

  def log_prior(self):
    return jnp.full((self.num_states,), -math.log(self.num_states))


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianCTMC(_MatrixProcess):
  """Ordinal CTMC for pixels (the tauLDR "Gaussian" process).

  Rate R_t = b(t) R_b with integrated rate B(t) = time_base (time_exp^t - 1),
  so q_{t|s} = expm((B(t) - B(s)) R_b). R_b moves mass to nearby levels:
  R_b[i, j] = exp(-(i-j)^2 / rate_sigma^2) sqrt(pi_j / pi_i), i != j, where pi
  is a discretised Gaussian of std q_sigma centred on the middle level. That
  rate is reversible with respect to pi (detailed balance), so
  M = diag(sqrt pi) R_b diag(1/sqrt pi) is symmetric and expm comes from one
  float64 `eigh` on the host, computed once; no ill-conditioned inverse of
  eigenvectors as with a general `eig`. (tauLDR's own rate matrix differs in
  detail; the roles of rate_sigma and Q_sigma are the same.)
  """

  vocab_size: int
  rate_sigma: float = 6.0
  q_sigma: float = 512.0
  time_base: float = 3.0
  time_exp: float = 100.0
  name: str = "gaussian"

  def __post_init__(self):
    k = self.vocab_size
    if k < 2:
      raise ValueError(f"GaussianCTMC needs vocab_size >= 2, got {k}")
    lv = np.arange(k, dtype=np.float64)
    logpi = -0.5 * ((lv - (k - 1) / 2.0) / self.q_sigma) ** 2
    pi = np.exp(logpi - logpi.max())
    pi /= pi.sum()
    w = np.exp(-((lv[:, None] - lv[None, :]) ** 2) / self.rate_sigma**2)
    np.fill_diagonal(w, 0.0)
    rate = w * np.sqrt(pi[None, :] / pi[:, None])
    rate -= np.diag(rate.sum(1))
    sym = np.sqrt(pi)[:, None] * rate / np.sqrt(pi)[None, :]
    sym = 0.5 * (sym + sym.T)
    evals, evecs = np.linalg.eigh(sym)
    evals = np.minimum(evals, 0.0)  # generator: eigenvalues <= 0 (clamp round-off)
    object.__setattr__(self, "rate_matrix", rate)
    object.__setattr__(self, "stationary", pi)
    object.__setattr__(self, "_evals", evals.astype(np.float32))
    # Fold the similarity transform into the eigenvectors once.
    object.__setattr__(self, "_left", (evecs / np.sqrt(pi)[:, None]).astype(np.float32))
    object.__setattr__(self, "_right", (evecs.T * np.sqrt(pi)[None, :]).astype(np.float32))

  @property
  def num_states(self):
    return self.vocab_size

  def integrated_rate(self, t):
    return self.time_base * (self.time_exp**t - 1.0)

  def transition(self, s, t):
    tau = self.integrated_rate(jnp.asarray(t, jnp.float32)) - self.integrated_rate(
      jnp.asarray(s, jnp.float32)
    )
    decay = jnp.exp(self._evals * tau[..., None])  # [..., K]
    m = jnp.einsum("ik,...k,kj->...ij", self._left, decay, self._right)
    m = jnp.maximum(m, 0.0)  # clamp round-off negatives
    return m / jnp.sum(m, -1, keepdims=True)

  def prior_sample(self, key, shape):
    return jax.random.categorical(key, self.log_prior(), shape=shape).astype(jnp.int32)

  def log_prior(self):
    return jnp.asarray(np.log(self.stationary), jnp.float32)


PROCESSES = ("masked", "uniform", "gaussian")


def make_process(config) -> Process:
  """Builds a process from a config with fields name, vocab_size and extras."""
  name = config.get("name") if hasattr(config, "get") else config["name"]
  vocab = int(config["vocab_size"])
  if vocab < 2:
    raise ValueError(f"config.process.vocab_size must be >= 2, got {vocab}")
  extras = {k: v for k, v in dict(config).items() if k not in ("name", "vocab_size")}
  allowed = {
    "masked": {"schedule"},
    "uniform": {"schedule"},
    "gaussian": {"rate_sigma", "q_sigma", "time_base", "time_exp"},
  }
  if name not in allowed:
    raise ValueError(f"config.process.name={name!r} is unknown; choose one of {PROCESSES}")
  bad = set(extras) - allowed[name]
  if bad:
    raise ValueError(
      f"config.process has fields {sorted(bad)} that the {name} process does not take; "
      f"it accepts {sorted(allowed[name])}"
    )
  cls = {"masked": Masked, "uniform": Uniform, "gaussian": GaussianCTMC}[name]
  return cls(vocab_size=vocab, **extras)
