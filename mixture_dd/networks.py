"""The denoising network: a bidirectional transformer with adaLN-zero conditioning.

The same module serves as the product-denoiser teacher (`latent=False`) and the
mixture student (`latent=True`, docs/method.md section 3). The student's only extra
parameters live in the `latent_embed` sub-module (and, with latent_positions
"learned", the `latent_pos_embed` embedding), so a teacher's parameter tree is
exactly the student's tree minus those and `student_params_from_teacher` can copy
a trained teacher into a fresh student.

Shapes: x `[batch, length]` int tokens, t `[batch]`, lam `[batch]`
(latent_dim 1, the paper's scalar latent) or `[batch, latent_dim]`,
labels `[batch]`, logits `[batch, length, vocab_size]` (float32).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import unfreeze

from mixture_dd.categorical import NEG_INF

# Name of the student's latent-path sub-module; everything under it is
# student-only and kept by `student_params_from_teacher`.
LATENT_MODULE = "latent_embed"
# The student-only position embedding (`Transformer.latent_positions`); a
# top-level parameter because it enters before the trunk, where the latent
# module has not been called yet.
LATENT_POSITIONS_PARAM = "latent_pos_embed"
# Under LATENT_MODULE, local latents with rotating blocks only: each position's
# place in its block (`BlockLatentPath.slots`).
SLOT_PARAM = "slot_embed"

TIME_EMBED_DIM = 128
POSITIONS = ("rope", "learned")
LATENT_ENTRIES = ("add", "gate", "centred")
# "global": lambda conditions every position through every block (the paper);
# "blocks": coordinate g of lambda conditions only block g of the positions
# (`BlockLatentPath`).
LATENT_SCOPES = ("global", "blocks")
# "none": the paper's network; "learned": a student-only absolute position
# embedding (`Transformer.latent_positions`).
LATENT_POSITIONS = ("none", "learned")
# Local latents' block partition: "none", the same contiguous blocks at every
# call; "random", rotated by a random offset per sequence per call
# (`block_groups`), so that a sampler's steps put their boundaries in
# different places.
LATENT_SHIFTS = ("none", "random")
# Local latents' law: "none", a product over the blocks of one mixture per block;
# "halves", every position also conditioned on a second partition's latent, the blocks
# moved by half a block (`CoupledLatentPath`), so neighbouring blocks share latents.
LATENT_COUPLINGS = ("none", "halves")
# The second partition's path ("halves"); student-only like LATENT_MODULE.
COUPLED_MODULE = "latent_coupled"
CENTRING_NODES = 32  # latents on a midpoint grid of [0, 1] whose mean embedding is removed


def block_groups(length: int, num_blocks: int, offset: jax.Array | None = None) -> jax.Array:
  """The block g(d) of each position for local latents: `[batch, D]` int32 (`[1, D]` for None).

  g(d) = ((d + o) mod D) // (D / k) for an example's offset o `[batch]` in
  [0, D / k): k contiguous blocks of D / k positions rotated by o, so the
  last block wraps round to the first positions when o > 0; o = 0 (None)
  is the contiguous partition. The network and the loss's block-by-block
  likelihood (`losses.component_log_likelihood`) both read the partition
  from here, so they always agree.
  """
  return _rotated_positions(length, offset) // (length // num_blocks)


def coupled_groups(length: int, num_blocks: int, offset: jax.Array | None = None):
  """The second partition of a coupled student (latent_coupling "halves"): `[batch, D]`
  int32 each (`[1, D]` for offset None).

  With r = (d + o) mod D and blocks of size = D / k: B-block h(d) = ((r + size / 2) mod D)
  // size (the `block_groups` blocks moved half a block earlier, so B-block h straddles
  the boundary between A-blocks h - 1 and h), and the segment s(d) = r // (size / 2) in
  [0, 2 k): segment 2 g lies in A-block g and B-block g, segment 2 g + 1 in A-block g and
  B-block g + 1 (mod k). The network and the loss's cycle likelihood
  (`losses.mixture_log_likelihood(..., coupled=True)`) both read them from here.
  Returns (b_groups, segments).
  """
  size = length // num_blocks
  r = _rotated_positions(length, offset)
  return ((r + size // 2) % length) // size, r // (size // 2)


def _rotated_positions(length: int, offset) -> jax.Array:
  """(d + o) mod D: `[batch, D]` int32 (`[1, D]`, d itself, for offset None)."""
  d = jnp.arange(length, dtype=jnp.int32)[None]
  if offset is None:
    return d
  return (d + jnp.asarray(offset, jnp.int32)[:, None]) % length


def is_latent_param(path: tuple[str, ...]) -> bool:
  """Whether a flattened parameter path belongs to the student only (new at
  distillation: kept by `student_params_from_teacher`, `latent_lr_mult`)."""
  return LATENT_MODULE in path or LATENT_POSITIONS_PARAM in path or COUPLED_MODULE in path


# Mixed precision keeps parameters (and so optimiser state and checkpoints)
# in float32 whatever the activation dtype: a bfloat16 run restores a float32
# run's checkpoint and vice versa.
PARAM_DTYPE = jnp.float32
_Dense = functools.partial(nn.Dense, param_dtype=PARAM_DTYPE)
_Embed = functools.partial(nn.Embed, param_dtype=PARAM_DTYPE)

Dtype = Any


def timestep_embedding(
  t: jax.Array, dim: int = TIME_EMBED_DIM, max_period: float = 10000.0
) -> jax.Array:
  """Sinusoidal embedding of `1000 * t` (DiT / DDPM convention).

  Args:
    t: `[batch]` float times (or lambdas) in [0, 1].
    dim: even embedding size.
    max_period: controls the lowest frequency.

  Returns:
    `[batch, dim]` float32 embedding, `[cos, sin]` halves.
  """
  if dim % 2:
    raise ValueError(f"timestep embedding dim must be even, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def latent_embedding(lam: jax.Array) -> jax.Array:
  """The latent's sinusoidal embedding: `[n]` -> `[n, 128]` (latent_dim 1, the
  paper's), `[n, k]` -> `[n, 128 k]`, each coordinate embedded as a scalar
  latent is and the k embeddings concatenated.

  Each coordinate keeps the full 128 dimensions (rather than 128 / k each):
  every coordinate is resolved as finely as the paper's scalar, the first
  coordinate's features are exactly the scalar path's (a k-latent network
  whose other input rows are zero is the k = 1 network), and the cost,
  128 (k - 1) x width more weights in the first projection, is per example,
  not per token.
  """
  if lam.ndim == 1:
    return timestep_embedding(lam)
  return timestep_embedding(lam.reshape(-1)).reshape(lam.shape[0], -1)


@functools.lru_cache(maxsize=None)
def _lattice_multiplier(num_points: int, latent_dim: int) -> int:
  """The Korobov multiplier a (coprime to n) whose lattice has the largest
  smallest distance between two points on the torus (ties: the smallest a)."""
  n = num_points
  j = np.arange(1, n)[:, None]
  best, best_a = -1.0, 1
  for a in range(1, n):
    if math.gcd(a, n) != 1:
      continue
    g = np.array([pow(a, i, n) for i in range(latent_dim)])
    frac = (j * g % n) / n
    dist2 = float(np.min(np.sum(np.minimum(frac, 1.0 - frac) ** 2, axis=1)))
    if dist2 > best + 1e-12:
      best, best_a = dist2, a
  return best_a


def latent_lattice(num_points: int, latent_dim: int) -> np.ndarray:
  """A rank-1 (Korobov) lattice of `num_points` in [0, 1)^latent_dim.

  Row j is frac(j (1, a, a^2, ..., a^(k-1)) / n), `[n, k]` float64, with a
  coprime to n chosen by `_lattice_multiplier` (latent_dim 1: the grid j / n).
  Because every a^i is coprime to n, each coordinate's projection is the
  whole grid {0, 1/n, ..., (n-1)/n}: shifted by one common offset (mod 1),
  the points are stratified in every coordinate, and with a uniform offset
  each point is uniform on the cube. This is how k > 1 latents keep what
  the scalar latent's grids give at k = 1: the stratified latents of a
  mixture's marginals (`denoisers.mixture_marginals`) and the centring grid
  of `LatentEmbed` ("centred").
  """
  if num_points < 1 or latent_dim < 1:
    raise ValueError(f"need num_points >= 1 and latent_dim >= 1, got {num_points}, {latent_dim}")
  a = _lattice_multiplier(num_points, latent_dim) if num_points > 1 else 1
  g = np.array([pow(a, i, num_points) for i in range(latent_dim)])
  return (np.arange(num_points)[:, None] * g % num_points) / num_points


def apply_rope(x: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding over the sequence axis.

  Args:
    x: `[batch, length, heads, head_dim]` queries or keys, head_dim even.
    base: rotary base.

  Returns:
    Same shape and dtype as `x`.
  """
  _, length, _, head_dim = x.shape
  half = head_dim // 2
  inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  cos = jnp.cos(angles)[None, :, None, :]
  sin = jnp.sin(angles)[None, :, None, :]
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :half], xf[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x.dtype)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """`x * (1 + scale) + shift` with per-example `[batch, width]` or
  per-position `[batch, length, width]` shift/scale."""
  if shift.ndim == 2:
    shift, scale = shift[:, None, :], scale[:, None, :]
  return x * (1.0 + scale) + shift


class LatentEmbed(nn.Module):
  """Embeds the mixture latent lambda into the conditioning space.

  sinusoid(1000 * lam) -> Dense -> SiLU -> Dense(width); lam `[batch]`
  (latent_dim 1) or `[batch, latent_dim]`, whose coordinates are embedded
  one by one and concatenated (`latent_embedding`) before the first Dense.
  "add": the last Dense is zero-initialised, so the output is exactly 0.
  "gate": the last Dense has its default (fan-in scaled) initialisation and
  the output is multiplied by a zero-initialised per-channel `gate`. Both
  start exactly at 0, but only "gate" has a gradient that differs between
  latents at the start: d loss / d gate = sum_j g_j * e(lambda_j), where
  e(lambda) varies with lambda, whereas "add" moves its zero kernel by
  sum_j g_j h(lambda_j)^T, which is the same rank-one direction for every
  component while they are all equal.
  "centred": as "add", minus the mean embedding over a fixed midpoint grid
  of lambda in [0, 1]. Averaged over lambda the conditioning is then the
  teacher's, so a small random start moves the mixture's marginals only at
  second order while its components differ at first order. With
  latent_dim k > 1 the grid is a lattice of CENTRING_NODES points whose
  every coordinate is the k = 1 midpoint grid (`latent_lattice` shifted by
  1 / (2 n)): the part of the embedding additive over coordinates is
  centred as at k = 1, interactions between coordinates approximately.
  """

  width: int
  entry: str = "add"
  dtype: Dtype = jnp.float32
  latent_dim: int = 1
  depth: int = 1  # hidden SiLU layers before the last projection (1: the paper's)

  @nn.compact
  def __call__(self, lam: jax.Array) -> jax.Array:
    return self.embed(lam)

  def embed(self, lam: jax.Array) -> jax.Array:
    """lam `[batch]` or `[batch, latent_dim]` -> `[batch, width]`."""
    if self.entry == "centred":
      if self.latent_dim == 1:
        grid = (jnp.arange(CENTRING_NODES, dtype=jnp.float32) + 0.5) / CENTRING_NODES
      else:
        nodes = latent_lattice(CENTRING_NODES, self.latent_dim) + 0.5 / CENTRING_NODES
        grid = jnp.asarray(nodes % 1.0, jnp.float32)
      lam = jnp.concatenate([lam.astype(jnp.float32), grid])
    h = latent_embedding(lam).astype(self.dtype)
    h = _Dense(self.width, dtype=self.dtype, name="dense_in")(h)
    h = nn.silu(h)
    for i in range(1, self.depth):  # depth 1 keeps the parameter names of earlier checkpoints
      h = nn.silu(_Dense(self.width, dtype=self.dtype, name=f"dense_hidden_{i}")(h))
    if self.entry == "centred":
      e = _Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="dense_out")(
        h
      )
      return e[:-CENTRING_NODES] - jnp.mean(e[-CENTRING_NODES:], axis=0, keepdims=True)
    if self.entry == "gate":
      e = _Dense(self.width, dtype=self.dtype, name="dense_out")(h)
      gate = self.param("gate", nn.initializers.zeros, (self.width,), PARAM_DTYPE)
      return e * gate.astype(self.dtype)
    # Zero init: the student starts exactly at the teacher (see Transformer).
    return _Dense(
      self.width, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="dense_out"
    )(h)


class BlockLatentPath(LatentEmbed):
  """Local latents: coordinate g of lambda `[batch, k]` conditions only block g
  (or its m coordinates [g m, (g + 1) m) of `[batch, k m]`, `latent_dim` m > 1).

  The D positions are k contiguous blocks of D / k. The trunk (every
  attention block) sees no latent; after it, each position d gets the
  embedding of its own block's latent lambda_{g(d)} (`LatentEmbed`'s path,
  shared by the blocks, with `latent_dim` m: the Transformer's
  latent_block_dim, 1 by default), which enters a position-wise adaLN-zero
  MLP (`head_*`) and the final layer's modulation.
  Nothing after the latent mixes positions, so the logits of block g depend
  on lambda_g alone: the student's law is a product over blocks of one
  mixture per block, p(x) = prod_g E_{lambda_g} prod_{d in g} p_d(x^d |
  lambda_g), whose likelihood the L-sample estimate scores block by block
  (`losses.mixture_log_likelihood(..., blocks=k)`): L^k joint patterns from
  L passes, where one shared latent gives L.

  offset `[batch]` int in [0, D / k) (None: 0) rotates the partition
  (`block_groups`): block g is then the positions d with
  (d + o) mod D in [g D / k, (g + 1) D / k). slots=True (latent_shift
  "random") adds a zero-initialised embedding of each position's place in
  its block, (d + o) mod (D / k) (`SLOT_PARAM`, `[D / k, width]`).

  Shapes: h `[batch, D, width]`, c `[batch, width]`, lam `[batch, k]` or
  `[batch, k m]`, offset `[batch]` or None -> (h `[batch, D, width]`,
  per-position conditioning `[batch, D, width]`).
  With the embedding's last projection zero (entry "add", "gate") the path
  adds exactly 0, as the global one does. Its parameters live under
  `LATENT_MODULE`, so a teacher copies in as for a global student.
  """

  num_blocks: int = 1
  mlp_ratio: int = 4
  slots: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, c: jax.Array, lam: jax.Array, offset: jax.Array | None = None):
    batch, length, width = h.shape
    size = length // self.num_blocks
    m = self.latent_dim  # coordinates per block (latent_block_dim), embedded together
    e = self.embed(lam.reshape((batch * self.num_blocks,) + ((m,) if m > 1 else ())))
    e = e.reshape(batch, self.num_blocks, width)
    if offset is None:
      e_pos = jnp.repeat(e, size, axis=1)
    else:  # the rotated partition (`block_groups`)
      groups = block_groups(length, self.num_blocks, offset)
      e_pos = jnp.take_along_axis(e, groups[..., None], axis=1)
    c_pos = c[:, None, :] + e_pos
    if self.slots:
      # Each position's place in its block, (d + o) mod (D / k): with rotating blocks a
      # position's block-mates change from call to call, and without this the head could
      # not tell which they are, so each block's components could only be patterns that
      # suit every partition (measured: the first step lost what the fixed blocks gained).
      # Zero-initialised, so the exact starts are still the teacher.
      slot = _rotated_positions(length, offset) % size
      table = self.param(SLOT_PARAM, nn.initializers.zeros, (size, width), PARAM_DTYPE)
      c_pos = c_pos + table.astype(self.dtype)[slot]
    mod = _Dense(3 * width, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="head_adaln")(
      nn.silu(c_pos)
    )
    shift, scale, gate = jnp.split(mod, 3, -1)
    y = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="head_ln")(h)
    y = _Dense(self.mlp_ratio * width, dtype=self.dtype, name="head_mlp_in")(
      _modulate(y, shift, scale)
    )
    y = _Dense(width, dtype=self.dtype, name="head_mlp_out")(nn.gelu(y, approximate=True))
    return h + gate * y, c_pos


class CoupledLatentPath(nn.Module):
  """The second partition of a coupled student (latent_coupling "halves"): logit offsets
  `[batch, D, vocab]` from lambda_B `[batch, k]`, one coordinate per B-block
  (`coupled_groups`: the blocks moved by half a block).

  The student's logits at position d are those of its A-block (`BlockLatentPath`, lambda_A)
  plus this offset (lambda_B), so p(x^d | lambda) is a product of experts of its A and
  B latents, and the law is E[prod_d p(x^d | lambda_{A(d)}, lambda_{B(d)})]: every pair of
  neighbours shares a latent (a pair across an A boundary lies inside a B-block). Additive
  in the logits so that the loss gets all L x L (lambda_A, lambda_B) pairs of its L
  latents from L passes of each path (`Transformer(coupled_parts=True)`), not L^2.
  Reads the trunk's output h `[batch, D, width]` and conditioning c `[batch, width]`;
  position-wise after the embedding (nothing mixes positions). The last projection is
  zero-initialised: a coupled student starts as the local student it extends (so as its
  teacher with an exact start); everything before it has its default initialisation, so
  the offsets differ between latents as soon as that projection moves.
  """

  width: int
  dtype: Dtype = jnp.float32
  num_blocks: int = 1
  mlp_ratio: int = 4
  vocab_size: int = 1
  slots: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, c: jax.Array, lam: jax.Array, offset: jax.Array | None = None):
    batch, length, width = h.shape
    size = length // self.num_blocks
    e = latent_embedding(lam.reshape(batch * self.num_blocks)).astype(self.dtype)
    e = _Dense(width, dtype=self.dtype, name="embed_in")(e)
    e = _Dense(width, dtype=self.dtype, name="embed_out")(nn.silu(e))
    e = e.reshape(batch, self.num_blocks, width)
    groups, _ = coupled_groups(length, self.num_blocks, offset)
    groups = jnp.broadcast_to(groups, (batch, length))
    c_pos = c[:, None, :] + jnp.take_along_axis(e, groups[..., None], axis=1)
    if self.slots:  # the place in the B-block, as BlockLatentPath's slots
      r = _rotated_positions(length, offset)
      table = self.param(SLOT_PARAM, nn.initializers.zeros, (size, width), PARAM_DTYPE)
      c_pos = c_pos + table.astype(self.dtype)[((r + size // 2) % length) % size]
    mod = _Dense(2 * width, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="adaln")(
      nn.silu(c_pos)
    )
    shift, scale = jnp.split(mod, 2, -1)
    y = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="ln")(h)
    y = _Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(_modulate(y, shift, scale))
    y = nn.gelu(y, approximate=True)
    return _Dense(
      self.vocab_size, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="logits"
    )(y.astype(jnp.float32))


class Attention(nn.Module):
  """Bidirectional multi-head self-attention, optional rotary positions.

  The core is `jax.nn.dot_product_attention` with `implementation=None`, so
  XLA or cuDNN (flash attention on a GPU) picks the kernel; both take the
  softmax in float32 for bfloat16 inputs. A fused kernel never materialises
  the `[batch, heads, length, length]` probabilities, so there is no dropout
  on them: regularisation is the residual dropout in `DiTBlock`. This differs
  from the earlier hand-written einsum/softmax version only when
  `dropout > 0` and `train=True`; parameter names and shapes (`qkv`, `out`)
  are unchanged, so its checkpoints load as they are.

  Shapes: x `[batch, length, width]` -> `[batch, length, width]`, with
  q/k/v `[batch, length, heads, width // heads]` inside.
  """

  heads: int
  rope: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.heads
    qkv = _Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, length, 3, self.heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.rope:
      q, k = apply_rope(q), apply_rope(k)
    out = jax.nn.dot_product_attention(
      q, k, v, scale=1.0 / math.sqrt(head_dim), implementation=None
    )
    out = out.astype(self.dtype).reshape(batch, length, width)
    return _Dense(width, dtype=self.dtype, name="out")(out)


class DiTBlock(nn.Module):
  """Pre-LN transformer block with adaLN-zero modulation from `c`.

  Shapes: x `[batch, length, width]`, c `[batch, width]` -> like x. Dropout
  acts on each residual branch (attention and MLP outputs) before its gate.
  """

  heads: int
  mlp_ratio: int
  rope: bool
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, train: bool) -> jax.Array:
    width = x.shape[-1]
    # Zero init makes every gate 0, so the block is the identity at init.
    mod = _Dense(6 * width, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="adaln")(
      nn.silu(c)
    )
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, -1)

    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="ln_attn")(x)
    h = Attention(self.heads, self.rope, self.dtype, name="attn")(_modulate(h, shift_a, scale_a))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    x = x + gate_a[:, None, :] * h

    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="ln_mlp")(x)
    h = _modulate(h, shift_m, scale_m)
    h = _Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(h)
    h = nn.gelu(h, approximate=True)
    h = _Dense(width, dtype=self.dtype, name="mlp_out")(h)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    return x + gate_m[:, None, :] * h


class Transformer(nn.Module):
  """DiT-style denoiser p_{0|t}(x0^d | x_t [; lambda]) for every position d.

  Attributes:
    num_states: input vocabulary, including the mask id for masked diffusion.
    vocab_size: output vocabulary: data values only, never the mask id.
    length: sequence length D.
    width: model width.
    depth: number of transformer blocks.
    heads: attention heads; must divide `width`.
    mlp_ratio: MLP hidden size / width.
    dropout: residual dropout rate on the attention and MLP branches (active
      only with `train=True`, rng "dropout"); no attention-probability
      dropout (see `Attention`).
    positions: "rope" (rotary on q/k) or "learned" (absolute embeddings).
    num_classes: 0 for unconditional; otherwise labels in [0, num_classes],
      where `num_classes` itself is the "null" class for classifier-free
      guidance / label dropout.
    latent: adds the mixture student's latent path (requires `lam`).
    latent_entry: how the latent path enters ("add", "gate" or "centred",
      see `LatentEmbed`); all three start at exactly 0, so the student equals
      its teacher at init (until `di4c.start_student` draws the last
      projection: student_start "fan_in", "normal" or "centred"); "centred"
      also subtracts the mean embedding over a fixed latent grid, so that
      averaged over lambda the conditioning stays the teacher's.
    latent_dim: k, the number of independent uniform latents: lambda in
      [0, 1]^k, lam `[batch]` for k = 1 (the paper's scalar latent),
      `[batch, k]` otherwise. Only the latent path's first Dense depends
      on k (its input is 128 k wide).
    latent_scope: "global" (the paper: lambda enters every block's
      conditioning, for every position) or "blocks" (local latents: the
      positions are latent_dim contiguous blocks, coordinate g conditions
      block g only, after the trunk; see `BlockLatentPath`). "blocks" needs
      latent_dim to divide length.
    latent_depth: hidden SiLU layers of the latent embedding MLP
      (`LatentEmbed.depth`; 1, the paper's: one) before its last projection.
    latent_positions: "none" (the paper) or "learned": the student adds a
      zero-initialised absolute position embedding (`[length, width]`,
      `LATENT_POSITIONS_PARAM`) to its token embeddings, so it starts as its
      teacher. Why: with rope and no such embedding, positions whose inputs
      agree (every position at t = 1, all masked) get the same logits for
      every lambda, so each mixture component is the same law at all of them
      and the mixture can only express exchangeable correlation (x^d and
      x^{d+1} as related as x^d and x^{d+30}). The teacher has the same blind
      spot, but a product of marginals loses nothing by it when the data's
      marginals do not depend on position; a mixture does.
    latent_shift: local latents' partition at sampling: "none" (the same
      contiguous blocks at every call) or "random" (rotated by an offset
      drawn per sequence per call, `block_groups`). The network itself only
      takes the offset (`block_offset`); `denoisers.mixture` draws it, and
      the Di4C loss draws one per example. Why: a local student's law is a
      product over blocks, so pairs that straddle a fixed boundary are
      sampled independently at every step, as the teacher samples them;
      rotated blocks correlate them at the steps whose partition joins them.
      "random" adds one zero-initialised parameter, the embedding of each
      position's place in its block (`SLOT_PARAM`), so the head knows its
      block-mates. Needs latent_scope "blocks".
    latent_block_dim: m, the coordinates of each block's latent (local
      latents only): lambda in [0, 1]^(k m), lam `[batch, k m]` with block
      g's coordinates at [g m, (g + 1) m), embedded together (the shared
      `LatentEmbed` with latent_dim m). 1 (the default) is one scalar per
      block. Why: a block's mixture is indexed by its latent alone, and one
      scalar through a smooth embedding gives the network few distinct
      patterns to lay out jointly; m > 1 is to a block what the global
      vector latent (latent_dim k) is to the whole sequence. Measured on
      the Markov chain at m = 4: worse than m = 1 at N = 1 on two seeds
      (docs/results/markov.md). Needs latent_scope "blocks".
    mask_id: if set, masked-diffusion carry-over: unmasked inputs are copied
      to the output. Must be a non-data id, vocab_size <= mask_id < num_states.
    dtype: activation dtype (float32 or bfloat16). Parameters are always
      float32; attention softmax, the final LayerNorm and the logits
      projection run in float32, and the logits are float32.
  """

  num_states: int
  vocab_size: int
  length: int
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0
  positions: str = "rope"
  num_classes: int = 0
  latent: bool = False
  latent_entry: str = "add"
  mask_id: int | None = None
  dtype: Dtype = jnp.float32
  latent_dim: int = 1
  latent_scope: str = "global"
  latent_depth: int = 1
  latent_positions: str = "none"
  latent_shift: str = "none"
  latent_block_dim: int = 1
  latent_coupling: str = "none"

  @property
  def lam_dim(self) -> int:
    """The number of latent coordinates lam carries: k m for local latents
    (latent_dim blocks of latent_block_dim each; 2 k with latent_coupling "halves": the
    A-blocks' k, then the B-blocks' k), latent_dim otherwise."""
    if self.latent_scope != "blocks":
      return self.latent_dim
    return self.latent_dim * self.latent_block_dim * (2 if self.coupled else 1)

  @property
  def coupled(self) -> bool:
    """Whether the student's law couples neighbouring blocks (latent_coupling "halves")."""
    return self.latent and self.latent_coupling == "halves"

  def validate_config(self) -> None:
    """Raises ValueError naming the offending field if the config is invalid."""
    if self.vocab_size < 1:
      raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
    if self.num_states < self.vocab_size:
      raise ValueError(f"num_states ({self.num_states}) must be >= vocab_size ({self.vocab_size})")
    if self.length < 1:
      raise ValueError(f"length must be >= 1, got {self.length}")
    if self.width < 1 or self.heads < 1 or self.width % self.heads:
      raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
    if self.depth < 0:
      raise ValueError(f"depth must be >= 0, got {self.depth}")
    if self.mlp_ratio < 1:
      raise ValueError(f"mlp_ratio must be >= 1, got {self.mlp_ratio}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.positions not in POSITIONS:
      raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
    if self.positions == "rope" and (self.width // self.heads) % 2:
      raise ValueError(
        f"positions='rope' needs an even head dim, got width/heads = {self.width}/{self.heads}"
      )
    if self.latent_entry not in LATENT_ENTRIES:
      raise ValueError(f"latent_entry must be one of {LATENT_ENTRIES}, got {self.latent_entry!r}")
    if self.latent_dim < 1:
      raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
    if self.latent_scope not in LATENT_SCOPES:
      raise ValueError(f"latent_scope must be one of {LATENT_SCOPES}, got {self.latent_scope!r}")
    if self.latent_depth < 1:
      raise ValueError(f"latent_depth must be >= 1, got {self.latent_depth}")
    if self.latent_positions not in LATENT_POSITIONS:
      raise ValueError(
        f"latent_positions must be one of {LATENT_POSITIONS}, got {self.latent_positions!r}"
      )
    if self.latent_shift not in LATENT_SHIFTS:
      raise ValueError(f"latent_shift must be one of {LATENT_SHIFTS}, got {self.latent_shift!r}")
    if self.latent_shift != "none" and self.latent_scope != "blocks":
      raise ValueError(
        f"latent_shift={self.latent_shift!r} rotates local latents' blocks: it needs "
        f"latent_scope='blocks', got {self.latent_scope!r}"
      )
    if self.latent_block_dim < 1:
      raise ValueError(f"latent_block_dim must be >= 1, got {self.latent_block_dim}")
    if self.latent_block_dim > 1 and self.latent_scope != "blocks":
      raise ValueError(
        f"latent_block_dim={self.latent_block_dim} gives each local block a vector latent: it "
        f"needs latent_scope='blocks', got {self.latent_scope!r} (a global vector latent is "
        "latent_dim)"
      )
    if self.latent_scope == "blocks" and self.length % self.latent_dim:
      raise ValueError(
        f"latent_scope='blocks' splits the {self.length} positions into latent_dim="
        f"{self.latent_dim} equal blocks; choose a latent_dim that divides {self.length}"
      )
    if self.latent_coupling not in LATENT_COUPLINGS:
      raise ValueError(
        f"latent_coupling must be one of {LATENT_COUPLINGS}, got {self.latent_coupling!r}"
      )
    if self.latent_coupling != "none":
      if self.latent_scope != "blocks" or self.latent_block_dim != 1:
        raise ValueError(
          f"latent_coupling={self.latent_coupling!r} couples local latents' blocks: it needs "
          f"latent_scope='blocks' and latent_block_dim=1, got {self.latent_scope!r} and "
          f"{self.latent_block_dim}"
        )
      if (self.length // self.latent_dim) % 2:
        raise ValueError(
          f"latent_coupling='halves' moves the blocks by half a block: the block size "
          f"length / latent_dim = {self.length}/{self.latent_dim} must be even"
        )
    if self.num_classes < 0:
      raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
    if self.mask_id is not None and not (self.vocab_size <= self.mask_id < self.num_states):
      raise ValueError(
        f"mask_id ({self.mask_id}) must satisfy vocab_size "
        f"({self.vocab_size}) <= mask_id < num_states ({self.num_states})"
      )

  def _lam_shape(self, batch) -> str:
    k = self.lam_dim
    if k == 1:
      return f"[{batch}]"
    if k == self.latent_dim:
      return f"[{batch}, latent_dim={k}]"
    if self.coupled:
      return f"[{batch}, 2 * latent_dim={k}] (A-blocks, then B-blocks)"
    return f"[{batch}, latent_dim * latent_block_dim={k}]"

  def _check_lam(self, lam: jax.Array, batch: int) -> jax.Array:
    """lam as `[batch]` (lam_dim 1) or `[batch, lam_dim]`; raises otherwise."""
    k = self.lam_dim
    if k == 1 and lam.shape == (batch, 1):
      return lam[:, 0]
    if k > 1 and lam.shape == (batch,) and self.is_initializing():
      # train_step.init_params builds every student with a `[1]` dummy lam; the
      # parameters' shapes depend on latent_dim only, not on lam's values.
      return jnp.broadcast_to(lam[:, None], (batch, k))
    if lam.shape != ((batch,) if k == 1 else (batch, k)):
      raise ValueError(
        f"lam must have shape {self._lam_shape(batch)} (this student has latent_dim="
        f"{self.latent_dim}"
        f"{'' if k == self.latent_dim else f', latent_block_dim={self.latent_block_dim}'}"
        f"{', latent_coupling=halves' if self.coupled else ''}), "
        f"got {lam.shape}; draw it with denoisers.draw_latents or sample through "
        "denoisers.mixture(...)"
      )
    return lam

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    t: jax.Array,
    lam: jax.Array | None = None,
    labels: jax.Array | None = None,
    train: bool = False,
    block_offset: jax.Array | None = None,
    shared_trunk: bool = False,
    coupled_parts: bool = False,
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Computes per-position logits over the data values.

    Args:
      x: `[batch, length]` int tokens in [0, num_states).
      t: `[batch]` float times in [0, 1].
      lam: `[batch]` (lam_dim 1; `[batch, 1]` is accepted too) or
        `[batch, lam_dim]` float mixture latents in [0, 1] (lam_dim: latent_dim,
        times latent_block_dim for local latents); required iff `latent`.
      labels: `[batch]` int class ids in [0, num_classes]; None means the
        null class. Only allowed when `num_classes > 0`.
      train: enables dropout.
      block_offset: `[batch]` int in [0, length / latent_dim), local
        latents only: rotates the block partition (`block_groups`); None is
        offset 0, the contiguous blocks.
      shared_trunk: local latents only: lam is `[batch, n]` or `[batch, n,
        lam_dim]`, n latents per example that all see the same x, t, labels
        and block_offset, and the logits are `[batch, n, length, vocab_size]`.
        The trunk, which a local latent never enters, runs once per example
        instead of n times (with one dropout mask per example); the values
        are those of n separate calls (the same in eval mode).
      coupled_parts: a coupled student (latent_coupling "halves") only: the two terms of
        its logits, (A-blocks' logits, B-blocks' offsets), each of the shape the logits
        would have; their sum is the logits. With shared_trunk, row i of the first with
        row j of the second is the component at (lambda_A of latent i, lambda_B of
        latent j): the Di4C loss's L x L pairs from n passes of each path.

    Returns:
      `[batch, length, vocab_size]` float32 logits (`[batch, n, length,
      vocab_size]` with shared_trunk), or the pair (coupled_parts).
    """
    self.validate_config()
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != self.length:
      raise ValueError(f"x must have shape [batch, length={self.length}], got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"x must be an integer array, got dtype {x.dtype}")
    batch = x.shape[0]
    t = jnp.asarray(t)
    chex.assert_shape(t, (batch,))
    if shared_trunk and not (self.latent and self.latent_scope == "blocks"):
      raise ValueError(
        "shared_trunk runs the trunk once for n local latents: it needs latent=True and "
        f"latent_scope='blocks' (a global latent enters every block), got latent={self.latent}, "
        f"latent_scope={self.latent_scope!r}"
      )
    if self.latent and lam is None:
      raise ValueError(f"Transformer(latent=True) needs lam of shape {self._lam_shape('batch')}")
    if not self.latent and lam is not None:
      raise ValueError("lam was given but the Transformer has latent=False")
    if self.num_classes == 0 and labels is not None:
      raise ValueError("labels were given but the Transformer has num_classes=0")
    if coupled_parts and not self.coupled:
      raise ValueError("coupled_parts needs a coupled student (latent_coupling='halves')")
    if block_offset is not None:
      if not (self.latent and self.latent_scope == "blocks"):
        raise ValueError(
          "block_offset rotates local latents' blocks: it needs latent=True and "
          f"latent_scope='blocks', got latent={self.latent}, latent_scope={self.latent_scope!r}"
        )
      block_offset = jnp.asarray(block_offset)
      chex.assert_shape(block_offset, (batch,))

    # Conditioning vector c: time (+ class) (+ latent).
    c = timestep_embedding(t).astype(self.dtype)
    c = _Dense(self.width, dtype=self.dtype, name="time_in")(c)
    c = _Dense(self.width, dtype=self.dtype, name="time_out")(nn.silu(c))
    if self.num_classes > 0:
      if labels is None:
        labels = jnp.full((batch,), self.num_classes, jnp.int32)
      labels = jnp.asarray(labels)
      chex.assert_shape(labels, (batch,))
      c = c + _Embed(self.num_classes + 1, self.width, dtype=self.dtype, name="class_embed")(labels)
    per = 1  # latents per example (shared_trunk: n)
    if shared_trunk:
      lam = jnp.asarray(lam)
      if lam.ndim < 2 or lam.shape[0] != batch:
        tail = "" if self.lam_dim == 1 else f", lam_dim={self.lam_dim}"
        raise ValueError(
          f"with shared_trunk, lam must have shape [batch={batch}, n{tail}] (n latents per "
          f"example), got {lam.shape}"
        )
      per = lam.shape[1]
      lam = self._check_lam(lam.reshape((batch * per,) + lam.shape[2:]), batch * per)
    elif self.latent:
      lam = self._check_lam(jnp.asarray(lam), batch)
    if self.latent and self.latent_scope == "global":
      # Di4C's transformer forks append lambda as an extra token. We add it to
      # c instead: with the last projection zero-initialised the added term is
      # exactly 0, so a student built from a teacher reproduces the teacher
      # bit-for-bit at step 0 (an extra token would perturb attention even
      # with a zero embedding), and the sequence does not grow.
      c = c + LatentEmbed(
        self.width,
        self.latent_entry,
        self.dtype,
        self.latent_dim,
        self.latent_depth,
        name=LATENT_MODULE,
      )(lam)

    h = _Embed(self.num_states, self.width, dtype=self.dtype, name="token_embed")(x)
    if self.positions == "learned":
      pos = self.param(
        "pos_embed", nn.initializers.normal(0.02), (self.length, self.width), PARAM_DTYPE
      )
      h = h + pos[None].astype(self.dtype)
    if self.latent and self.latent_positions == "learned":
      pos = self.param(
        LATENT_POSITIONS_PARAM, nn.initializers.zeros, (self.length, self.width), PARAM_DTYPE
      )
      h = h + pos[None].astype(self.dtype)
    for i in range(self.depth):
      h = DiTBlock(
        self.heads,
        self.mlp_ratio,
        self.positions == "rope",
        self.dropout,
        self.dtype,
        name=f"block_{i}",
      )(h, c, train)
    if per > 1:  # everything after the trunk is per latent
      rep = lambda a: jnp.repeat(a, per, axis=0)
      h, c, x = rep(h), rep(c), rep(x)
      block_offset = None if block_offset is None else rep(block_offset)
    delta = None
    if self.coupled:  # from the trunk's output, beside the A-blocks' head
      delta = CoupledLatentPath(
        self.width,
        self.dtype,
        num_blocks=self.latent_dim,
        mlp_ratio=self.mlp_ratio,
        vocab_size=self.vocab_size,
        slots=self.latent_shift == "random",
        name=COUPLED_MODULE,
      )(h, c, lam[:, self.latent_dim :], block_offset)
      lam = lam[:, : self.latent_dim]
    if self.latent and self.latent_scope == "blocks":
      h, c = BlockLatentPath(
        self.width,
        self.latent_entry,
        self.dtype,
        latent_dim=self.latent_block_dim,
        depth=self.latent_depth,
        num_blocks=self.latent_dim,
        mlp_ratio=self.mlp_ratio,
        slots=self.latent_shift == "random",
        name=LATENT_MODULE,
      )(h, c, lam, block_offset)

    # Final layer: adaLN-modulated LayerNorm, projection in float32.
    mod = _Dense(
      2 * self.width, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="final_adaln"
    )(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = nn.LayerNorm(use_scale=False, use_bias=False, dtype=jnp.float32, name="final_ln")(
      h.astype(jnp.float32)
    )
    h = _modulate(h, shift.astype(jnp.float32), scale.astype(jnp.float32))
    logits = _Dense(self.vocab_size, dtype=jnp.float32, name="logits")(h)

    if self.mask_id is not None:
      # MDLM substitution: an unmasked token is known to be clean, so its
      # posterior is a point mass at itself.
      is_masked = (x == self.mask_id)[..., None]
      keep = jax.nn.one_hot(x, self.vocab_size, dtype=jnp.bool_)
      # The other values are impossible: NEG_INF, finite so that log-softmax and
      # the KL terms stay finite.
      carried = jnp.where(keep, 0.0, NEG_INF).astype(jnp.float32)
      logits = jnp.where(is_masked, logits, carried)
      if delta is not None:  # an unmasked position stays carried whatever lambda_B
        delta = jnp.where(is_masked, delta, 0.0)

    chex.assert_shape(logits, (batch * per, self.length, self.vocab_size))
    shape = (batch, per) + logits.shape[1:] if shared_trunk else logits.shape
    if coupled_parts:
      return logits.reshape(shape), delta.reshape(shape)
    if delta is not None:
      logits = logits + delta
    return logits.reshape(shape).astype(jnp.float32)


def _flatten(params) -> dict[tuple[str, ...], Any]:
  return traverse_util.flatten_dict(unfreeze(params))


def _signature(leaf) -> tuple[tuple[int, ...], Any]:
  # Works for arrays and for jax.ShapeDtypeStruct (trees from jax.eval_shape).
  return tuple(leaf.shape), jnp.dtype(leaf.dtype)


def student_params_from_teacher(teacher_params, student_params):
  """Copies a teacher's parameters into a mixture student's tree.

  Every teacher leaf replaces the student leaf at the same path; the
  student-only leaves (`is_latent_param`: under the `latent_embed` sub-module,
  and the `latent_pos_embed` position embedding) are kept. Works on either the
  `{"params": ...}` variables dict or the bare params tree, as long as both
  arguments use the same form. Abstract trees (from `jax.eval_shape`) are
  accepted too, e.g. to check compatibility before loading a checkpoint.

  Args:
    teacher_params: parameters of a `Transformer(latent=False)`.
    student_params: parameters of the same config with `latent=True`.

  Returns:
    A new (unfrozen) nested dict shaped like `student_params`.

  Raises:
    ValueError: listing every missing, extra or mis-shaped path.
  """
  teacher = _flatten(teacher_params)
  student = _flatten(student_params)
  is_latent = is_latent_param
  problems = []
  for path, leaf in teacher.items():
    name = "/".join(path)
    if is_latent(path):
      problems.append(f"{name}: teacher has a latent path")
    elif path not in student:
      problems.append(f"{name}: in teacher, missing from student")
    elif _signature(leaf) != _signature(student[path]):
      (t_shape, t_dtype), (s_shape, s_dtype) = (_signature(leaf), _signature(student[path]))
      problems.append(f"{name}: teacher {t_shape} {t_dtype} vs student {s_shape} {s_dtype}")
  for path in student:
    if not is_latent(path) and path not in teacher:
      problems.append(f"{'/'.join(path)}: in student, missing from teacher")
  if not any(is_latent(p) for p in student):
    problems.append(f"student has no '{LATENT_MODULE}' parameters")
  if problems:
    raise ValueError("teacher and student parameters are incompatible:\n  " + "\n  ".join(problems))
  merged = {p: (student[p] if is_latent(p) else teacher[p]) for p in student}
  return traverse_util.unflatten_dict(merged)


def flops_per_example(model: Transformer) -> float:
  """Forward-pass FLOPs of one example (multiply-add = 2 FLOPs).

  Counts the matmuls that scale with the sequence: qkv, attention scores,
  attention-weighted values, attention output projection, the MLP and the
  final projection (and a local-latent student's per-position head).
  Per-example conditioning MLPs, embeddings, norms and softmax are left out (O(width^2) vs O(length * width^2)). A training step
  costs about 3x this.

  Args:
    model: the denoiser configuration.

  Returns:
    FLOPs as a float.
  """
  l, w, v = model.length, model.width, model.vocab_size
  per_block = (
    2 * l * w * 3 * w  # qkv
    + 2 * l * l * w  # scores q.k over all heads
    + 2 * l * l * w  # probs @ v
    + 2 * l * w * w  # output projection
    + 2 * 2 * l * w * model.mlp_ratio * w
  )  # MLP in + out
  head = 0
  if model.latent and model.latent_scope == "blocks":
    # Local latents condition every position: its adaLN and MLP scale with the sequence.
    head = 2 * l * w * 3 * w + 2 * 2 * l * w * model.mlp_ratio * w
  return float(model.depth * per_block + head + 2 * l * w * v)


def count_params(params) -> int:
  """Total number of scalar parameters in a pytree."""
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
