"""The exact ideal product denoiser of a first-order Markov chain.

For a chain x^1 -> x^2 -> ... -> x^D (init `[S]`, trans `[S, S]`, as
`data.markov.make_chain` makes) noised by any per-dimension forward process,
x_t is a hidden Markov model: the hidden path is x0, the emission at
position d is q_{t|0}(x_t^d | x0^d). Forward-backward then gives every
posterior marginal q(x0^d = a | x_t) exactly in O(D S^2) per sequence, where
enumerating S^D sequences (`exact.ideal_log_marginals`) is out of reach at
S = 8, D = 32. These marginals are the best any product denoiser can do: the
"ideal" teacher of the markov data set.

For the masked process an observed token's emission is one-hot on its value
and a masked token's is the same for every value, so the posterior depends
on t only through which tokens are masked; the code takes the emissions from
`process.transition` and so serves the uniform and Gaussian processes too.

Everything is jittable float32 in log space (logsumexp), with the forward
and backward messages renormalised at every position so that no value
accumulates over D; the tests compare against float64 brute force.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import denoisers
from mixture_dd.categorical import NEG_INF
from mixture_dd.processes import Process

_TINY = 1e-30


def _log(p):
  """log p with NEG_INF (not -inf) for impossible entries, as processes.py does."""
  return jnp.where(p > 0, jnp.log(jnp.maximum(p, _TINY)), NEG_INF)


def chain_params(init, trans) -> dict:
  """The denoiser's parameters: {"log_init": `[S]`, "log_trans": `[S, S]`} float32.

  Logs are taken in float64 on the host (then cast), so a transition
  probability of 1e-6 keeps its full float32 precision in log space; exact
  zeros become NEG_INF.
  """
  init = np.asarray(init, np.float64)
  trans = np.asarray(trans, np.float64)
  s = init.shape[0]
  if init.ndim != 1 or trans.shape != (s, s):
    raise ValueError(f"need init [S] and trans [S, S], got {init.shape} and {trans.shape}")
  log = lambda p: np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), NEG_INF).astype(np.float32)
  return {"log_init": jnp.asarray(log(init)), "log_trans": jnp.asarray(log(trans))}


def emission_log_likelihood(process: Process, x_t, t, num_values: int):
  """log q_{t|0}(x_t^d | x0^d = a) for every a < S: `[batch, D, S]` float32.

  x_t `[batch, D]` int, t scalar or `[batch]`. Each position's row is
  shifted so that its maximum is 0 (the posterior does not see per-position
  constants): a row that is 0 for every value (a masked token at t = 0 of
  the linear schedule) then carries no information instead of adding -1e6
  to every path, which float32 cannot resolve.

  The masked process takes its exact limit form whatever t is: 0 on the
  observed value of a kept token (NEG_INF elsewhere), 0 everywhere for a
  mask. So a kept token stays one-hot even at t = 1, where the schedule
  makes it impossible (alpha_1 = 0) and its likelihood row would be all 0.
  """
  x_t = jnp.asarray(x_t, jnp.int32)
  if process.mask_id is not None:
    seen = (x_t[..., None] == jnp.arange(num_values)) | (x_t == process.mask_id)[..., None]
    return jnp.where(seen, 0.0, NEG_INF)
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
  trans = process.transition(jnp.zeros_like(t), t)[:, :num_values, :]  # [B, S, K], row = x0
  lik = jnp.take_along_axis(trans[:, None, :, :], x_t[:, :, None, None], axis=-1)[..., 0]
  log_lik = _log(lik)  # [B, D, S]
  return log_lik - jnp.max(log_lik, axis=-1, keepdims=True)


def _forward_message(f, log_trans, e_d):
  """log sum_a exp(f[:, a]) trans[a, b] + e_d[:, b] `[batch, S]`: one step of the forward pass."""
  return jax.nn.logsumexp(f[:, :, None] + log_trans, axis=1) + e_d


def forward_backward(log_init, log_trans, log_emission):
  """Posterior marginals of a hidden Markov chain, in log space.

  log_init `[S]`, log_trans `[S, S]` (row = previous value), log_emission
  `[batch, D, S]` (any per-position constant is irrelevant). Returns the
  normalised log q(x^d = a | observations) `[batch, D, S]`, floored at
  NEG_INF.
  """
  norm = lambda v: v - jax.nn.logsumexp(v, axis=-1, keepdims=True)
  e = jnp.moveaxis(log_emission, 1, 0)  # [D, B, S]
  f0 = norm(log_init + e[0])

  def forward(f, e_d):  # f_d(b) ∝ sum_a f_{d-1}(a) trans[a, b] e_d(b)
    f = norm(_forward_message(f, log_trans, e_d))
    return f, f

  def backward(g, e_next):  # g_d(a) ∝ sum_b trans[a, b] e_{d+1}(b) g_{d+1}(b)
    g = norm(jax.nn.logsumexp(log_trans + (e_next + g)[:, None, :], axis=2))
    return g, g

  _, fs = jax.lax.scan(forward, f0, e[1:])
  g_last = jnp.zeros_like(f0)
  _, gs = jax.lax.scan(backward, g_last, e[1:], reverse=True)  # gs[d] = g_d, d < D - 1
  fs = jnp.concatenate([f0[None], fs])
  gs = jnp.concatenate([gs, g_last[None]])
  post = jax.nn.log_softmax(fs + gs, axis=-1)
  return jnp.maximum(jnp.moveaxis(post, 0, 1), NEG_INF)


def chain_log_evidence(log_init, log_trans, log_emission):
  """log sum_x p(x) prod_d e_d(x^d) `[batch]`: the forward algorithm's normaliser.

  Arguments as `forward_backward`'s; unnormalised, so per-position constants
  of log_emission add to it (they cancel in `posterior_total_correlation`).
  """
  e = jnp.moveaxis(log_emission, 1, 0)  # [D, B, S]
  f, _ = jax.lax.scan(
    lambda f, e_d: (_forward_message(f, log_trans, e_d), None), log_init + e[0], e[1:]
  )
  return jax.nn.logsumexp(f, axis=-1)


def posterior_total_correlation(process: Process, params: dict, x_t, t, x0):
  """Total correlation of the chain's exact posterior p(x0 | x_t), nats per sequence `[batch]`.

  TC = sum_d H(p(x0^d | x_t)) - H(p(x0 | x_t)): what the exact joint denoiser
  has and any product denoiser (the exact ideal teacher included) lacks. One
  unbiased draw per row: sum_d H(post_d) + log p(x0 | x_t) at x0, a draw of
  the posterior; x0 from the data with x_t ~ q_t(. | x0) is one, so the mean
  over such rows estimates E_{x_t} TC. x_t, x0 `[batch, D]` int, t scalar or
  `[batch]`; params `chain_params(init, trans)`.
  """
  num_values = params["log_init"].shape[-1]
  x0 = jnp.asarray(x0, jnp.int32)
  emit = emission_log_likelihood(process, x_t, t, num_values)
  post = forward_backward(params["log_init"], params["log_trans"], emit)
  entropy = -jnp.sum(jnp.exp(post) * post, axis=(1, 2))
  log_joint = (
    params["log_init"][x0[:, 0]]
    + jnp.sum(params["log_trans"][x0[:, :-1], x0[:, 1:]], axis=-1)
    + jnp.sum(jnp.take_along_axis(emit, x0[..., None], axis=-1)[..., 0], axis=-1)
  )
  log_evidence = chain_log_evidence(params["log_init"], params["log_trans"], emit)
  return entropy + log_joint - log_evidence


def ideal_log_marginals(process: Process, params: dict, x_t, t):
  """Exact log q^d_{0|t}(a | x_t) of the chain in `params` (`chain_params`).

  x_t `[batch, D]` int (mask id = S for the masked process), t scalar or
  `[batch]`. Returns `[batch, D, S]` float32 log-probabilities; an
  unmasked token of the masked process gets a one-hot (NEG_INF elsewhere).
  """
  num_values = params["log_init"].shape[-1]
  if num_values != process.vocab_size:
    raise ValueError(
      f"the chain has {num_values} values but the process's vocab_size is "
      f"{process.vocab_size}; build both from the same data config"
    )
  emit = emission_log_likelihood(process, x_t, t, num_values)
  return forward_backward(params["log_init"], params["log_trans"], emit)


def denoiser(process: Process) -> denoisers.Denoiser:
  """The exact ideal product denoiser; its params are `chain_params(init, trans)`."""
  return denoisers.from_function(
    lambda params, x_t, t: ideal_log_marginals(process, params, x_t, t)
  )
