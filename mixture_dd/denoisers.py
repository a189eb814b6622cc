"""The one denoiser interface, and the ways to build one.

A denoiser is any callable

    denoise(params, x_t, t, key, lam=None, labels=None) -> logits

with x_t `[batch, D]` int32, t `[batch]` float32, lam `[batch]` in [0, 1)
(a mixture student's latent; `[batch, k]` for a student that takes k > 1
latent coordinates; None for a product denoiser, which ignores it), labels
`[batch]` int32 or None (unconditional), and logits `[batch, D, S]` over the
data values. `params` is an explicit (traced) argument so that jitted
samplers and losses never bake weights in as constants; `key` is the
randomness the denoiser may use (dropout in train mode, a mixture's latent
draw).

Everything that calls a model takes this one interface: the samplers, the
teacher loss, the Di4C loss (student and teacher), evaluation and the exact
toolkit (through `exact_view`).

A denoiser made by `from_network` carries the number of latent coordinates
its network takes (`Transformer.lam_dim`: latent_dim, times latent_block_dim
for local latents) as the attribute `latent_dim` (`latent_dim(denoiser)`, 1
when absent), and the wrappers here that keep a latent-taking denoiser pass
it on, so that every place that draws latents for it (`mixture`,
`mixture_marginals`, the Di4C loss, the exact toolkit's nodes) draws the
right number. A student with
local latents (`networks.BlockLatentPath`) also carries `latent_blocks`
(k, the model's latent_dim: its law is a product of k block mixtures, each
indexed by its block's latent_block_dim coordinates, which the Di4C loss
scores block by block; 1 for every other denoiser), and `latent_shifts`: the
number of block partitions it draws from at every call (D / k for a network
with latent_shift "random", whose denoiser takes a `block_offset` `[batch]`
keyword; 1, the contiguous blocks, for every other denoiser). Such a
student's denoiser also has `components(params, x_t, t, key, lams, labels=None,
block_offset=None) -> logits [batch, n, D, S]` for lams `[batch, n]` (or
`[batch, n, k]`): n latents on the same inputs, its trunk run once
(`Transformer(shared_trunk=True)`); `di4c.component_log_probs` uses it for
the loss's pass at t, whose L latents share x_t. A coupled student (latent_coupling
"halves", `networks.CoupledLatentPath`: lam `[batch, 2 k]`) also has `coupled_parts(...)`,
the same call returning the pair (A-blocks' logits, B-blocks' offsets) `[batch, n, D, S]`
each (`latent_coupled(denoiser)`), from which the loss forms its L x L latent pairs.
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import exact, losses, networks


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


def latent_dim(denoiser) -> int:
  """The number k of latent coordinates a denoiser takes (lam `[batch, k]`;
  1: lam `[batch]`): its `latent_dim` attribute, 1 when it has none."""
  return int(getattr(denoiser, "latent_dim", 1))


def latent_blocks(denoiser) -> int:
  """The number of position blocks with a latent coordinate each (a student
  with local latents: its latent_dim; 1 for a global latent or a product)."""
  return int(getattr(denoiser, "latent_blocks", 1))


def latent_shifts(denoiser) -> int:
  """The number of rotations of a local student's block partition it draws
  from per call (`networks.block_groups`: offsets 0 .. D / k - 1 for
  latent_shift "random"); 1 (the contiguous blocks) for every other denoiser."""
  return int(getattr(denoiser, "latent_shifts", 1))


def latent_coupled(denoiser) -> bool:
  """Whether a local student's law couples neighbouring blocks (latent_coupling "halves",
  `networks.CoupledLatentPath`): its lam is `[batch, 2 k]`, A-blocks then B-blocks, and
  it has `coupled_parts` for the loss's L x L latent pairs."""
  return getattr(denoiser, "coupled_parts", None) is not None


def draw_block_offsets(key, denoiser, batch: int) -> jax.Array | None:
  """Uniform block offsets `[batch]` for a denoiser with `latent_shifts` > 1; None otherwise."""
  shifts = latent_shifts(denoiser)
  if shifts == 1:
    return None
  return jax.random.randint(key, (batch,), 0, shifts, jnp.int32)


def _with_latent_dim(fn, k: int, blocks: int = 1, shifts: int = 1):
  fn.latent_dim = k
  fn.latent_blocks = blocks
  fn.latent_shifts = shifts
  return fn


def draw_latents(
  key, shape: tuple[int, ...], latent_dim: int = 1, stratified: bool = False
) -> jax.Array:
  """U[0, 1) latents: `[*shape]` for latent_dim 1, `[*shape, latent_dim]` otherwise.

  Independent draws by default (the scalar latent: the same draw, bit for
  bit, as `jax.random.uniform(key, shape)`). stratified=True, for the loss's
  `[B, L]` latents: along axis 1 each coordinate has exactly one latent in
  every stratum [j / L, (j + 1) / L), uniform within it, and the strata are
  matched to the L slots by an independent random permutation per example and
  coordinate (a Latin hypercube for latent_dim > 1). Each latent is still
  U[0, 1), so the L-sample averages stay unbiased; what changes is their
  variance: the L components always cover the whole latent range, so the
  log-mean-exp likelihood estimate (biased low by its variance) is tighter and
  every region of the latent gets a gradient from every example.
  """
  full = tuple(shape) if latent_dim == 1 else tuple(shape) + (latent_dim,)
  if not stratified:
    return jax.random.uniform(key, full, jnp.float32)
  if len(shape) < 2:
    raise ValueError(f"stratified latents need a [batch, L, ...] shape, got {tuple(shape)}")
  k_perm, k_jitter = jax.random.split(key)
  num_l = shape[1]
  # argsort of iid uniforms along the L axis: a uniformly random permutation of the strata.
  strata = jnp.argsort(jax.random.uniform(k_perm, full), axis=1).astype(jnp.float32)
  return (strata + jax.random.uniform(k_jitter, full, jnp.float32)) / num_l


def from_network(model, train: bool = False) -> Denoiser:
  """A `networks.Transformer` as a denoiser.

  train=True turns dropout on (its randomness from `key`). Labels reach the
  model only if it is class-conditional; lam only if it has a latent path.
  The denoiser's `latent_dim` attribute is the model's `lam_dim`.
  """

  local = model.latent and model.latent_scope == "blocks"

  def denoise(
    params, x_t, t, key, lam=None, labels=None, block_offset=None, shared_trunk=False, parts=False
  ):
    kw = {"shared_trunk": True} if shared_trunk else {}
    if parts:
      kw["coupled_parts"] = True
    if block_offset is not None:  # the network refuses it without local latents
      kw["block_offset"] = block_offset
    if model.num_classes and labels is not None:
      kw["labels"] = labels
    if model.latent:
      if lam is None:
        raise ValueError(
          "this network is a mixture student: pass lam "
          f"{'`[batch]`' if model.lam_dim == 1 else f'`[batch, {model.lam_dim}]`'}, "
          "or sample through denoisers.mixture(...)"
        )
      kw["lam"] = lam
    rngs = {"dropout": key} if train else {}
    return model.apply({"params": params}, x_t, t, train=train, rngs=rngs, **kw)

  shifts = model.length // model.latent_dim if local and model.latent_shift == "random" else 1
  if local:
    denoise.components = functools.partial(_shared_components, denoise)
  if model.coupled:
    denoise.coupled_parts = functools.partial(_shared_components, denoise, parts=True)
  return _with_latent_dim(
    denoise, model.lam_dim if model.latent else 1, model.latent_dim if local else 1, shifts
  )


def _shared_components(
  denoise, params, x_t, t, key, lams, labels=None, block_offset=None, parts=False
):
  return denoise(
    params,
    x_t,
    t,
    key,
    lam=lams,
    labels=labels,
    block_offset=block_offset,
    shared_trunk=True,
    parts=parts,
  )


def without_components(denoiser: Denoiser) -> Denoiser:
  """The same denoiser without its shared-trunk `components` (so the Di4C loss runs its L
  latents as L copies of the input, as before it had one): the reference that
  benchmarks.distill_throughput and the tests compare the shared path with. A coupled
  student has no such path: its loss needs the L x L latent pairs of `coupled_parts`."""
  if latent_coupled(denoiser):
    raise ValueError(
      "a coupled student (latent_coupling='halves') scores its L x L latent pairs through its "
      "shared trunk (coupled_parts); it has no L-copy path"
    )

  def plain(*args, **kw):
    return denoiser(*args, **kw)

  return _with_latent_dim(
    plain, latent_dim(denoiser), latent_blocks(denoiser), latent_shifts(denoiser)
  )


def from_function(fn: Callable) -> Denoiser:
  """A product denoiser from a plain `fn(params, x_t, t) -> logits`."""

  def denoise(params, x_t, t, key, lam=None, labels=None):
    return fn(params, x_t, t)

  return denoise


def mixture(component: Denoiser) -> Denoiser:
  """A mixture's samples: a fresh lambda ~ U[0, 1)^k per sequence per call
  (shared by all D positions, or one coordinate per block for local
  latents), drawn from the key; k = latent_dim(component). A component
  with latent_shifts > 1 also gets a fresh block offset per sequence per
  call (from a key folded off the latents', so their draws are unchanged)."""
  k = latent_dim(component)

  def denoise(params, x_t, t, key, lam=None, labels=None):
    lam = draw_latents(key, (x_t.shape[0],), k)
    offsets = draw_block_offsets(jax.random.fold_in(key, 1), component, x_t.shape[0])
    if offsets is None:
      return component(params, x_t, t, key, lam=lam, labels=labels)
    return component(params, x_t, t, key, lam=lam, labels=labels, block_offset=offsets)

  return denoise


def mixture_marginals(component: Denoiser, latent_nodes: int) -> Denoiser:
  """A mixture's per-token marginals as a product denoiser (log-probs).

  Averages the components' probabilities over `latent_nodes` stratified
  latents (one random offset per example, from the key): how a student is
  a teacher for the next round (di4c^2), and how its marginals are scored.
  With latent_dim k > 1 the latents are a lattice stratified in every
  coordinate (`networks.latent_lattice`) shifted by one uniform offset in
  [0, 1)^k per example, so each latent is still uniform on the cube. A
  component with rotating blocks (latent_shifts s > 1) gives node j the
  offset j mod s, so the marginals average over partitions as its samples do.

  A coupled student (`latent_coupled`) sees a pair of coordinates at each position, its
  A-block's and its B-block's; on the lattice those two are a constant apart (mod 1) for
  some block pairs (n = 16 nodes, 2 k = 16 coordinates: every (A_g, B_g)), so the average
  would cover one line of the pair square. Its marginals instead average every pair
  (A of node i, B of node j) of the nodes that share a partition (`_coupled_marginals`):
  a grid of the square from s trunk passes and L passes of each path.
  """
  k = latent_dim(component)
  shifts = latent_shifts(component)
  if latent_coupled(component):
    return _coupled_marginals(component, latent_nodes, k, shifts)

  def denoise(params, x_t, t, key, lam=None, labels=None):
    b = x_t.shape[0]
    if k == 1:
      offs = jax.random.uniform(key, (b, 1))
      lams = jnp.mod(offs + jnp.arange(latent_nodes) / latent_nodes, 1.0)  # [B, L]
    else:
      offs = jax.random.uniform(key, (b, 1, k))
      grid = jnp.asarray(networks.latent_lattice(latent_nodes, k), jnp.float32)
      lams = jnp.mod(offs + grid[None], 1.0)  # [B, L, k]
    rep = lambda a: None if a is None else jnp.repeat(a, latent_nodes, axis=0)
    lam_flat = lams.reshape((b * latent_nodes,) + lams.shape[2:])
    kw = {}
    if shifts > 1:  # node j at offset j mod shifts: the sampler's average over partitions
      kw["block_offset"] = jnp.tile(jnp.arange(latent_nodes, dtype=jnp.int32) % shifts, b)
    lp = jax.nn.log_softmax(
      component(params, rep(x_t), rep(t), key, lam=lam_flat, labels=rep(labels), **kw).astype(
        jnp.float32
      ),
      -1,
    )
    return losses.mixture_log_marginals(lp.reshape((b, latent_nodes) + lp.shape[1:]))

  return denoise


def coupled_pair_log_probs(a, d) -> jax.Array:
  """A coupled student's components from its two paths' terms (`coupled_parts`): a, d
  `[B, n, D, S]` (A logits of latent i, B offsets of latent j) -> log-probs `[B, n n, D, S]`,
  row i n + j the pair (lambda_A of i, lambda_B of j), as `losses.mixture_log_likelihood(...,
  coupled=True)` reads them."""
  pairs = jax.nn.log_softmax((a[:, :, None] + d[:, None]).astype(jnp.float32), -1)
  return pairs.reshape((a.shape[0], -1) + pairs.shape[3:])


def _coupled_marginals(component: Denoiser, latent_nodes: int, k: int, shifts: int) -> Denoiser:
  """`mixture_marginals` of a coupled student: node j's partition is j mod shifts, as for a
  local student; within a partition the n nodes give n x n (A, B) pairs from one shared-trunk
  call (`coupled_parts`), each partition weighted by its share of the nodes."""

  def denoise(params, x_t, t, key, lam=None, labels=None):
    b = x_t.shape[0]
    offs = jax.random.uniform(key, (b, 1, k))
    grid = jnp.asarray(networks.latent_lattice(latent_nodes, k), jnp.float32)
    lams = jnp.mod(offs + grid[None], 1.0)  # [B, L, 2 k]
    parts = []
    for o in range(min(shifts, latent_nodes)):
      nodes = np.arange(o, latent_nodes, shifts)
      kw = {"block_offset": jnp.full((b,), o, jnp.int32)} if shifts > 1 else {}
      a, d = component.coupled_parts(params, x_t, t, key, lams[:, nodes], labels=labels, **kw)
      lp = losses.mixture_log_marginals(coupled_pair_log_probs(a, d))  # [B, D, S]
      parts.append(lp + np.log(len(nodes) / latent_nodes))
    return jax.nn.logsumexp(jnp.stack(parts), axis=0)

  return denoise


def with_labels(denoiser: Denoiser, labels) -> Denoiser:
  """The denoiser with its labels fixed (for samplers, which pass none)."""
  if labels is None:
    return denoiser
  return _with_latent_dim(
    functools.partial(denoiser, labels=labels),
    latent_dim(denoiser),
    latent_blocks(denoiser),
    latent_shifts(denoiser),
  )


def ideal(process, length: int) -> Denoiser:
  """The exact ideal product denoiser of a tiny family; params = its probabilities `[S**D]`."""
  return from_function(
    lambda probs, x_t, t: exact.ideal_log_marginals(process, probs, length, x_t, t)
  )


def exact_view(denoiser: Denoiser, params, size: int | None = None) -> Callable:
  """`fn(x [n, D], t: float, lam) -> log-probs [n, D, S]` (numpy), the view
  `exact.sampler_distribution` takes; lam is None (a product denoiser), a
  float (latent_dim 1) or a `[k]` point of [0, 1]^k, shared by the n rows.
  The view's `latent_dim` attribute is the denoiser's.

  With `size`, inputs are padded to `size` rows so that the jitted call
  compiles once: the exact toolkit evaluates only the reachable states,
  whose count changes from step to step.

  A student with rotating blocks (latent_shifts > 1) is refused: its law at
  a step averages over D / k partitions, which this view (one lam point per
  call) cannot express.
  """
  if latent_shifts(denoiser) > 1:
    raise ValueError(
      "the exact toolkit cannot evaluate a student with rotating blocks (model.latent_shift="
      "'random': each step's law averages over its partitions); evaluate it by sampling, or "
      "distil with model.latent_shift='none' for exact laws"
    )

  @jax.jit
  def f(params, x, t, lam):
    n = x.shape[0]
    tt = jnp.full((n,), t, jnp.float32)
    ll = None if lam is None else jnp.broadcast_to(lam, (n,) + lam.shape)
    logits = denoiser(params, x, tt, jax.random.key(0), lam=ll)
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1)

  def view(x, t, lam=None):
    x = np.asarray(x, np.int32)
    n = x.shape[0]
    if size is not None:
      pad = np.zeros((size, x.shape[1]), np.int32)
      pad[:n] = x
      x = pad
    lam = None if lam is None else np.asarray(lam, np.float32)
    return np.asarray(f(params, x, float(t), lam))[:n]

  return _with_latent_dim(view, latent_dim(denoiser))
