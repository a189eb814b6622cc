"""The one denoiser interface, and the ways to build one.

A denoiser is any callable

    denoise(params, x_t, t, key, lam=None, labels=None) -> logits

with x_t `[batch, D]` int32, t `[batch]` float32, lam `[batch]` in [0, 1)
(a mixture student's latent; None for a product denoiser, which ignores
it), labels `[batch]` int32 or None (unconditional), and logits
`[batch, D, S]` over the data values. `params` is an explicit (traced)
argument so that jitted samplers and losses never bake weights in as
constants; `key` is the randomness the denoiser may use (dropout in train
mode, a mixture's latent draw).

Everything that calls a model takes this one interface: the samplers, the
teacher loss, the Di4C loss (student and teacher), evaluation and the exact
toolkit (through `exact_view`).
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import exact, losses


class Denoiser(Protocol):
  def __call__(
    self,
    params,
    x_t: jax.Array,
    t: jax.Array,
    key: jax.Array,
    lam: jax.Array | None = None,
    labels: jax.Array | None = None,
  ) -> jax.Array: ...


def from_network(model, train: bool = False) -> Denoiser:
  """A `networks.Transformer` as a denoiser.

  train=True turns dropout on (its randomness from `key`). Labels reach the
  model only if it is class-conditional; lam only if it has a latent path.
  """

  def denoise(params, x_t, t, key, lam=None, labels=None):
    kw = {}
    if model.num_classes and labels is not None:
      kw["labels"] = labels
    if model.latent:
      if lam is None:
        raise ValueError(
          "this network is a mixture student: pass lam `[batch]`, or sample "
          "through denoisers.mixture(...)"
        )
      kw["lam"] = lam
    rngs = {"dropout": key} if train else {}
    return model.apply({"params": params}, x_t, t, train=train, rngs=rngs, **kw)

  return denoise


def from_function(fn: Callable) -> Denoiser:
  """A product denoiser from a plain `fn(params, x_t, t) -> logits`."""

  def denoise(params, x_t, t, key, lam=None, labels=None):
    return fn(params, x_t, t)

  return denoise


def mixture(component: Denoiser) -> Denoiser:
  """A mixture's samples: a fresh lambda ~ U[0, 1) per sequence per call
  (shared by all D positions), drawn from the key."""

  def denoise(params, x_t, t, key, lam=None, labels=None):
    lam = jax.random.uniform(key, (x_t.shape[0],), jnp.float32)
    return component(params, x_t, t, key, lam=lam, labels=labels)

  return denoise


def mixture_marginals(component: Denoiser, num_latents: int) -> Denoiser:
  """A mixture's per-token marginals as a product denoiser (log-probs).

  Averages the components' probabilities over `num_latents` stratified
  latents (one random offset per example, from the key): how a student is
  a teacher for the next round (di4c^2), and how its marginals are scored.
  """

  def denoise(params, x_t, t, key, lam=None, labels=None):
    b = x_t.shape[0]
    offs = jax.random.uniform(key, (b, 1))
    lams = jnp.mod(offs + jnp.arange(num_latents) / num_latents, 1.0)  # [B, L]
    rep = lambda a: None if a is None else jnp.repeat(a, num_latents, axis=0)
    lp = jax.nn.log_softmax(
      component(params, rep(x_t), rep(t), key, lam=lams.reshape(-1), labels=rep(labels)).astype(
        jnp.float32
      ),
      -1,
    )
    return losses.mixture_log_marginals(lp.reshape((b, num_latents) + lp.shape[1:]))

  return denoise


def with_labels(denoiser: Denoiser, labels) -> Denoiser:
  """The denoiser with its labels fixed (for samplers, which pass none)."""
  if labels is None:
    return denoiser
  return functools.partial(denoiser, labels=labels)


def ideal(process, length: int) -> Denoiser:
  """The exact ideal product denoiser of a tiny family; params = its probabilities `[S**D]`."""
  return from_function(
    lambda probs, x_t, t: exact.ideal_log_marginals(process, probs, length, x_t, t)
  )


def exact_view(denoiser: Denoiser, params, size: int | None = None) -> Callable:
  """`fn(x [n, D], t: float, lam: float | None) -> log-probs [n, D, S]` (numpy),
  the view `exact.sampler_distribution` takes.

  With `size`, inputs are padded to `size` rows so that the jitted call
  compiles once: the exact toolkit evaluates only the reachable states,
  whose count changes from step to step.
  """

  @jax.jit
  def f(params, x, t, lam):
    n = x.shape[0]
    tt = jnp.full((n,), t, jnp.float32)
    ll = None if lam is None else jnp.full((n,), lam, jnp.float32)
    logits = denoiser(params, x, tt, jax.random.key(0), lam=ll)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1)

  def view(x, t, lam=None):
    x = np.asarray(x, np.int32)
    n = x.shape[0]
    if size is not None:
      pad = np.zeros((size, x.shape[1]), np.int32)
      pad[:n] = x
      x = pad
    return np.asarray(f(params, x, float(t), None if lam is None else float(lam)))[:n]

  return view
