"""Training objectives: the teacher's denoising losses and Di4C's three terms.

All losses are pure functions of (params, batch, key) built around a
`denoisers.Denoiser`; they return a scalar and a dict of per-term metrics
for logging.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from mixture_dd.processes import Masked, Process


def stratified_times(key, batch: int, t_min: float = 0.0, t_max: float = 1.0):
  """Low-variance times `[batch]`: one uniform offset, evenly spread (MD4).

  t_i = t_min + (t_max - t_min) * ((u + i / B) mod 1). Marginally each t_i is
  uniform, and the batch covers [t_min, t_max] evenly, which cuts the
  variance of the ELBO's time integral.
  """
  u = jax.random.uniform(key, ())
  frac = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
  return t_min + (t_max - t_min) * frac


def masked_elbo_weight(process: Masked, t):
  """-alpha'(t) / (1 - alpha(t)): the continuous-time masked ELBO weight."""
  d_alpha = jax.vmap(jax.grad(lambda u: process.alpha(u)))(t)
  return -d_alpha / jnp.maximum(1.0 - process.alpha(t), 1e-6)


def drop_labels(key, labels, rate: float, num_classes: int):
  """Classifier-free guidance's label dropout: each label becomes the null
  class `num_classes` with probability `rate`. labels `[B]` or None."""
  if labels is None or rate <= 0:
    return labels
  return jnp.where(jax.random.bernoulli(key, rate, labels.shape), num_classes, labels)


def teacher_loss(denoiser, params, process: Process, x0, key, t_min: float = 0.0, labels=None):
  """The teacher's objective, per token (nats), averaged over the batch.

  * Masked process: the continuous-time ELBO of MDLM / MD4,
      E_t [ -alpha'_t / (1 - alpha_t) * sum_{d masked} -log p(x0^d | x_t) ] / D,
    an upper bound on -log p(x0) / D. With carry-over, unmasked tokens cost 0.
  * Uniform and Gaussian processes: x0-prediction cross-entropy
      E_t [ sum_d -log p(x0^d | x_t) ] / D.
    Why not the CTMC ELBO: the analytic sampler only needs the per-token
    marginals q^d_{0|t}(. | x_t), and cross-entropy is a proper scoring rule
    whose minimiser is exactly those marginals at every t (it is consistent),
    with none of the ELBO's rate-weighted terms that blow up near t = 0
    (tauLDR itself leans on an auxiliary cross-entropy for stability).

  x0 `[B, D]` int32; `denoiser` a `denoisers.Denoiser` (in train mode for
  dropout), called with `labels`. Returns (loss, metrics).
  """
  chex.assert_rank(x0, 2)
  batch, length = x0.shape
  k_t, k_xt, k_net = jax.random.split(key, 3)
  t = stratified_times(k_t, batch, t_min, 1.0)
  x_t = process.sample_xt(k_xt, x0, t)
  logits = denoiser(params, x_t, t, k_net, labels=labels)
  chex.assert_shape(logits, (batch, length, process.vocab_size))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, x0[..., None], -1)[..., 0]  # [B, D]
  if isinstance(process, Masked):
    masked = (x_t == process.mask_id).astype(jnp.float32)
    per_example = masked_elbo_weight(process, t) * jnp.sum(masked * nll, -1) / length
    metrics = {"elbo_per_token": jnp.mean(per_example)}
  else:
    per_example = jnp.mean(nll, -1)
    metrics = {"xent_per_token": jnp.mean(per_example)}
  loss = jnp.mean(per_example)
  metrics["loss"] = loss
  return loss, metrics


# ---------------------------------------------------------------------------
# Di4C (docs/method.md, sections 3-4).
#
# lp `[B, L, D, S]` are the student's component log-probabilities
# log p^{theta,d}_{0|t}(a | x_t; lambda_j) for L latents per example.
# ---------------------------------------------------------------------------


def component_log_likelihood(lp, x0, blocks: int = 1, groups=None):
  """sum_d lp[b, j, d, x0[b, m, d]] for every target m and latent j: `[B, M, L]`.

  lp `[B, L, D, S]`, x0 `[B, M, D]` int. With blocks = k > 1 the sum runs
  within each of k blocks: `[B, M, L, k]`; the contiguous blocks of D / k
  positions, or groups `[B, D]` int in [0, k) (each example's block of each
  position, `networks.block_groups` for a rotated partition).
  """
  chex.assert_rank(lp, 4)
  chex.assert_rank(x0, 3)
  picked = jnp.take_along_axis(lp[:, None], x0[:, :, None, :, None], axis=-1)[..., 0]
  if blocks == 1:
    return jnp.sum(picked, axis=-1)  # [B, M, L, D] -> [B, M, L]
  b, m, num_l, length = picked.shape
  if groups is None:
    return jnp.sum(picked.reshape(b, m, num_l, blocks, length // blocks), axis=-1)
  chex.assert_shape(groups, (b, length))
  member = jax.nn.one_hot(groups, blocks, dtype=picked.dtype)  # [B, D, k]
  return jnp.einsum("bmld,bdk->bmlk", picked, member, precision=jax.lax.Precision.HIGHEST)


def mixture_log_marginals(lp):
  """lpbar[b, d, a] = logsumexp_j lp[b, j, d, a] - log L: averages probabilities."""
  return jax.nn.logsumexp(lp, axis=1) - jnp.log(lp.shape[1])


def mixture_log_likelihood(lp, x0, blocks: int = 1, groups=None, coupled: bool = False):
  """log p^theta(x0 | x_t) ~= logsumexp_j sum_d lp_j[d, x0^d] - log L: `[B, M]`.

  blocks = k > 1 (a student with local latents, `networks.BlockLatentPath`:
  block g of the components depends on lambda_g alone, so the law is a
  product of k block mixtures): the sum over blocks of each block's own
  L-sample estimate, sum_g (logsumexp_j sum_{d in g} lp_j[d, x0^d] - log L);
  groups `[B, D]`: a rotated partition (`component_log_likelihood`).

  coupled (a coupled student, `networks.CoupledLatentPath`): lp `[B, L L, D, S]` holds
  the component at (lambda_A of latent i, lambda_B of latent j) at row i L + j, and
  groups `[B, D]` (required) each position's segment in [0, 2 k) (`networks.coupled_groups`:
  segment 2 g in A-block g and B-block g, 2 g + 1 in A-block g and B-block g + 1). The 2 k
  latents form a cycle B_0 - A_0 - B_1 - A_1 - ... - A_{k-1} - B_0 whose edges are the
  segments, and the L-sample estimate (each latent over its own L draws, every assignment)
  is L^(-2 k) tr(P_0 ... P_{k-1}), P_g[j, j'] = sum_i f_{2g}[i, j] f_{2g+1}[i, j'] with
  f_s[i, j] = prod_{d in s} p(x0^d | lambda_A = i, lambda_B = j); computed in log space.
  """
  if coupled:
    return _cycle_log_likelihood(lp, x0, blocks, groups)
  ll = component_log_likelihood(lp, x0, blocks, groups)
  if blocks == 1:
    return jax.nn.logsumexp(ll, axis=-1) - jnp.log(lp.shape[1])
  return jnp.sum(jax.nn.logsumexp(ll, axis=-2) - jnp.log(lp.shape[1]), axis=-1)


def _cycle_log_likelihood(lp, x0, blocks: int, groups):
  num_l = int(round(lp.shape[1] ** 0.5))
  if num_l * num_l != lp.shape[1] or groups is None:
    raise ValueError(
      f"a coupled likelihood needs lp [B, L*L, D, S] and the segments, got lp {lp.shape}"
    )
  ll = component_log_likelihood(lp, x0, 2 * blocks, groups)  # [B, M, L L, 2 k]
  ll = ll.reshape(ll.shape[:2] + (num_l, num_l, blocks, 2))  # [..., i, j, g, half]
  # log P_g[j, j'] = logsumexp_i (ll[i, j, g, 0] + ll[i, j', g, 1]): [B, M, k, L, L]
  first = jnp.moveaxis(ll[..., 0], -1, 2)  # [B, M, k, i, j]
  second = jnp.moveaxis(ll[..., 1], -1, 2)  # [B, M, k, i, j']
  log_p = jax.nn.logsumexp(first[..., :, :, None] + second[..., :, None, :], axis=-3)

  def log_matmul(a, b):  # [..., L, L] x [..., L, L] in log space
    return jax.nn.logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)

  prod = log_p[:, :, 0]
  for g in range(1, blocks):
    prod = log_matmul(prod, log_p[:, :, g])
  trace = jax.nn.logsumexp(jnp.diagonal(prod, axis1=-2, axis2=-1), axis=-1)
  return trace - 2 * blocks * jnp.log(num_l)


def correlation(lp, x0, lpbar=None, blocks: int = 1, groups=None, coupled: bool = False):
  """C(x0) = mixture log-likelihood - sum_d lpbar[d, x0^d]: `[B, M]`.

  Zero when every component is the same product; it is the part of the
  likelihood that a product of marginals cannot express. blocks, groups: as
  in `mixture_log_likelihood`.
  """
  if lpbar is None:
    lpbar = mixture_log_marginals(lp)
  marg = jnp.take_along_axis(lpbar[:, None], x0[..., None], axis=-1)[..., 0].sum(-1)
  return mixture_log_likelihood(lp, x0, blocks, groups, coupled) - marg


def kl_categorical(logp, logq):
  """sum over the last two axes (D, S) of KL(p || q): `[...]`.

  Where p is exactly 0 (logp at the categorical.NEG_INF floor) the term is 0, never 0 * inf.
  """
  p = jnp.exp(logp)
  return jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=(-2, -1))


def distillation_term(teacher_logp, lp):
  """(1/L) sum_j sum_d KL(teacher_j[d] || component_j[d]): `[B]`.

  teacher_logp `[B, D, S]` (one teacher input for every latent) or
  `[B, L, D, S]` (a fresh teacher input per latent, tauLDR), lp
  `[B, L, D, S]`. The per-component surrogate: by convexity an upper bound
  of KL(teacher || mixture marginal).
  """
  if teacher_logp.ndim == 3:
    teacher_logp = teacher_logp[:, None]
  return jnp.mean(kl_categorical(teacher_logp, lp), axis=1)


def consistency_term(lp, target_logq, x0_targets, blocks: int = 1, groups=None, coupled=False):
  """-(1/L) sum_i C(x0^(i)) + sum_d KL(pbar_u[d] || exp lpbar[d]): `[B]`.

  lp `[B, L, D, S]` (the student at t, with gradient), target_logq
  `[B, L, D, S]` the student's stop-gradient component log-probs at
  (x_u^(i), u, lambda'_i), x0_targets `[B, L, D]` draws x0^(i) ~ q_i;
  blocks, groups, coupled as in `mixture_log_likelihood` (lp's partition; coupled: lp
  `[B, L L, D, S]`).
  """
  lpbar = mixture_log_marginals(lp)
  corr = correlation(lp, x0_targets, lpbar, blocks, groups, coupled)  # [B, L]
  log_pbar_u = mixture_log_marginals(target_logq)
  return -jnp.mean(corr, axis=1) + kl_categorical(log_pbar_u, lpbar)


def marginal_term(lp, teacher_logp):
  """sum_d KL(teacher[d] || exp lpbar[d]): `[B]`, the teacher-marginal anchor.

  The control-variate half of the data term: its expectation over real x0
  is computed in closed form from the teacher's marginals. On at every t in
  every setup of the official code.
  """
  return kl_categorical(teacher_logp, mixture_log_marginals(lp))


def data_correlation_term(lp, x0, alpha, blocks: int = 1, groups=None, coupled: bool = False):
  """alpha_t * (-C(x0)) on real data x0 `[B, D]`: `[B]` ("di4c-d")."""
  return -alpha * correlation(lp, x0[:, None], None, blocks, groups, coupled)[:, 0]
