"""Tests for mixture_dd.networks."""

import math
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import traverse_util
from jax.extend import core as jex_core

from mixture_dd import networks

VOCAB = 8
LENGTH = 12
# Unit roundoff of bfloat16: 8 significand bits (7 stored), round to nearest.
BF16_U = 2.0**-8


def _quick_distill_losses(dtype: str, num_steps: int, seed: int = 0, data_dir=None):
  """(student params, per-step Di4C losses `[num_steps]`) of a short run.

  configs/tiny_distill.py (exact "ideal" teacher, no trained teacher needed),
  shrunk to one block so that compiling the scanned steps stays cheap. The
  only use of the training glue in this file: re-point it here if
  quick_distill moves or changes what it returns.
  """
  from mixture_dd import distill  # pylint: disable=g-import-not-at-top
  from mixture_dd.configs import tiny_distill  # pylint: disable=g-import-not-at-top

  config = tiny_distill.get_config()
  config.model.update(dtype=dtype, width=32, depth=1)
  config.seed = seed
  if data_dir:
    config.data.data_dir = data_dir
  result = distill.quick_distill(config, num_steps=num_steps, chunk=num_steps)
  return result.params, np.asarray(result.losses)


def _model(**kw):
  cfg = dict(num_states=VOCAB, vocab_size=VOCAB, length=LENGTH, width=32, depth=2, heads=4)
  cfg.update(kw)
  return networks.Transformer(**cfg)


def _inputs(key, batch=3, num_states=VOCAB, length=LENGTH):
  kx, kt = jax.random.split(key)
  x = jax.random.randint(kx, (batch, length), 0, num_states, jnp.int32)
  t = jax.random.uniform(kt, (batch,))
  return x, t


def _perturb(params, key, scale=0.1):
  """Random non-zero weights everywhere: a stand-in for a trained model.

  A fresh adaLN-zero model ignores its conditioning and context, so tests
  that need those paths to matter perturb all leaves first.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  leaves = [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_output_shape_and_dtype(positions, num_classes):
  model = _model(positions=positions, num_classes=num_classes)
  x, t = _inputs(jax.random.PRNGKey(0))
  labels = None if num_classes == 0 else jnp.array([0, 4, 5], jnp.int32)
  params = model.init(jax.random.PRNGKey(1), x, t, labels=labels)
  logits = model.apply(_perturb(params, jax.random.PRNGKey(2)), x, t, labels=labels)
  assert logits.shape == (3, LENGTH, VOCAB)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  if num_classes:
    # Labels matter once the class embedding is non-trivial.
    other = model.apply(
      _perturb(params, jax.random.PRNGKey(2)), x, t, labels=jnp.array([1, 2, 3], jnp.int32)
    )
    assert not np.allclose(logits, other)


def _reference_attention(params, x, heads, rope):
  """The hand-written attention the kernel replaced, kept as the reference.

  Args:
    params: `Attention` variables, `{"params": {"qkv": ..., "out": ...}}`.
    x: `[batch, length, width]` float32 inputs.
    heads: number of heads.
    rope: rotary positions on q and k.

  Returns:
    `[batch, length, width]`: einsum scores / sqrt(head_dim), float32
    softmax over keys, einsum with v, output projection.
  """
  p = params["params"]
  batch, length, width = x.shape
  head_dim = width // heads
  qkv = x @ p["qkv"]["kernel"] + p["qkv"]["bias"]
  qkv = qkv.reshape(batch, length, 3, heads, head_dim)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if rope:
    q, k = networks.apply_rope(q), networks.apply_rope(k)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, width)
  return out @ p["out"]["kernel"] + p["out"]["bias"]


class AttentionKernelTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(
    # (batch, length, width, heads): head dims 8, 8 and 16; a length that
    # is no multiple of anything, and one past a typical kernel tile.
    shape=[(2, 5, 16, 2), (3, 12, 32, 4), (1, 33, 32, 2)],
    rope=[True, False],
  )
  def test_matches_reference_einsum_softmax(self, shape, rope):
    batch, length, width, heads = shape
    attn = networks.Attention(heads=heads, rope=rope)
    kx, kp = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (batch, length, width))
    params = attn.init(kp, x)
    got = self.variant(attn.apply)(params, x)
    want = _reference_attention(params, x, heads, rope)
    chex.assert_shape(got, (batch, length, width))
    # Same float32 arithmetic up to the order of operations (the kernel
    # scales the scores after the q.k product, XLA may fuse and reorder the
    # sums). Outputs are O(1) and each sum has <= 33 terms, so reordering
    # moves them by a few tens of float32 ulps (eps = 1.2e-7): 1e-5 is well
    # above that and far below what a wrong scale, missing rope or a
    # transposed head layout would give (O(0.1)).
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    # The check is not vacuous: rope changes the output.
    other = networks.Attention(heads=heads, rope=not rope).apply(params, x)
    assert np.max(np.abs(np.asarray(other) - np.asarray(want))) > 1e-2


# Every parameter of a small model with every optional part (class labels,
# learned positions, latent path, masked carry-over), as the hand-written
# attention made them: checkpoints written before the switch to
# jax.nn.dot_product_attention must keep loading, whatever the activation
# dtype.
_PARAM_TREE = {
  "params/block_0/adaln/bias": (48,),
  "params/block_0/adaln/kernel": (8, 48),
  "params/block_0/attn/out/bias": (8,),
  "params/block_0/attn/out/kernel": (8, 8),
  "params/block_0/attn/qkv/bias": (24,),
  "params/block_0/attn/qkv/kernel": (8, 24),
  "params/block_0/mlp_in/bias": (16,),
  "params/block_0/mlp_in/kernel": (8, 16),
  "params/block_0/mlp_out/bias": (8,),
  "params/block_0/mlp_out/kernel": (16, 8),
  "params/class_embed/embedding": (3, 8),
  "params/final_adaln/bias": (16,),
  "params/final_adaln/kernel": (8, 16),
  "params/latent_embed/dense_in/bias": (8,),
  "params/latent_embed/dense_in/kernel": (128, 8),
  "params/latent_embed/dense_out/bias": (8,),
  "params/latent_embed/dense_out/kernel": (8, 8),
  "params/logits/bias": (5,),
  "params/logits/kernel": (8, 5),
  "params/pos_embed": (3, 8),
  "params/time_in/bias": (8,),
  "params/time_in/kernel": (128, 8),
  "params/time_out/bias": (8,),
  "params/time_out/kernel": (8, 8),
  "params/token_embed/embedding": (6, 8),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_parameter_tree_is_unchanged(dtype):
  model = networks.Transformer(
    num_states=6,
    vocab_size=5,
    length=3,
    width=8,
    depth=1,
    heads=2,
    mlp_ratio=2,
    num_classes=2,
    latent=True,
    positions="learned",
    mask_id=5,
    dtype=dtype,
  )
  x, t = jnp.zeros((1, 3), jnp.int32), jnp.zeros((1,))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, t)
  flat = {"/".join(path): leaf for path, leaf in traverse_util.flatten_dict(params).items()}
  assert sorted(flat) == sorted(_PARAM_TREE)
  for name, leaf in flat.items():
    assert leaf.shape == _PARAM_TREE[name], name
    # Parameters (and so checkpoints and optimiser state) stay float32.
    assert leaf.dtype == jnp.float32, name


def _sub_jaxprs(jaxpr):
  """`jaxpr` and every jaxpr nested in its equations (pjit, custom_vjp...)."""
  yield jaxpr
  for eqn in jaxpr.eqns:
    for sub in jex_core.jaxprs_in_params(eqn.params):
      yield from _sub_jaxprs(sub)


def test_bfloat16_model_runs_softmax_and_logits_in_float32():
  model = _model(dtype=jnp.bfloat16)
  x, t = _inputs(jax.random.PRNGKey(0))
  # Tracing needs only shapes: no eager bfloat16 compiles.
  params = jax.eval_shape(model.init, jax.random.PRNGKey(1), x, t)
  jaxpr = jax.make_jaxpr(model.apply)(params, x, t).jaxpr
  eqns = [e for j in _sub_jaxprs(jaxpr) for e in j.eqns]
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  # Activations really are bfloat16: most matmuls take bfloat16 operands.
  assert sum(e.invars[0].aval.dtype == jnp.bfloat16 for e in dots) >= 8
  # Every exp (the attention softmax in each block, plus the float32 time
  # embedding) and every max-reduction (softmax stabiliser) is float32.
  exps = [e for e in eqns if e.primitive.name in ("exp", "reduce_max")]
  assert len(exps) >= 2 * model.depth
  for e in exps:
    assert e.invars[0].aval.dtype == jnp.float32, e
  # The output projection is a float32 matmul producing float32 logits.
  assert dots[-1].outvars[0].aval.dtype == jnp.float32
  assert dots[-1].invars[0].aval.dtype == jnp.float32


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_bfloat16_forward_agrees_with_float32(positions):
  m32 = _model(positions=positions)
  m16 = _model(positions=positions, dtype=jnp.bfloat16)
  x, t = _inputs(jax.random.PRNGKey(0), batch=8)
  # Jitted, and perturbed (as `_perturb` does) with NumPy's generator:
  # eager per-op compiles, bfloat16 ones shared with no other test, would
  # dominate the run time.
  rng = np.random.default_rng(2)
  params = jax.tree.map(
    lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32),
    jax.jit(m32.init)(jax.random.PRNGKey(1), x, t),
  )
  want = jax.jit(m32.apply)(params, x, t)
  got = jax.jit(m16.apply)(params, x, t)
  assert got.dtype == jnp.float32
  chex.assert_shape(got, want.shape)
  chex.assert_tree_all_finite(got)
  # Each bfloat16 rounding has relative error <= u = 2^-8. Per block the
  # activations are rounded about 8 times (qkv, attention output, out
  # projection, modulation, MLP in, GELU, MLP out, residual add), so with
  # 2 blocks and the conditioning path ~20 roundings. Independent roundings
  # add in quadrature: sqrt(20) u ~ 4.5 u in RMS relative error of the
  # logits. We allow 8 u = 2^-5 (measured: 3.4 u learned, 4.4 u rope).
  # Below u / 16 the bfloat16 path would not be taken at all.
  err = np.asarray(got - want)
  rel = np.sqrt(np.mean(err**2) / np.mean(np.asarray(want) ** 2))
  assert BF16_U / 16 < rel < 8 * BF16_U, rel / BF16_U
  # Probabilities, which sampling and the losses consume: softmax is
  # 1/2-Lipschitz per coordinate in the max-norm of the logits, so logit
  # errors of 8 u times logits of size ~3 (about 0.1) move no probability by
  # more than 0.05. Measured: 0.012 learned, 0.029 rope (its largest logit
  # error is 0.2, but the bound needs aligned errors at p = 1/2).
  chex.assert_trees_all_close(jax.nn.softmax(got), jax.nn.softmax(want), atol=0.05, rtol=0.0)


def measure(seed: int) -> dict:
  """The late/early loss ratio of a 40-step bfloat16 distillation (`benchmarks.spread`)."""
  # Its own data directory: the processes of benchmarks.spread run at once.
  _, losses = _quick_distill_losses("bfloat16", 40, seed, tempfile.mkdtemp())
  return {"late_over_early": float(losses[-10:].mean() / losses[:10].mean())}


def test_bfloat16_distillation_stays_finite_and_learns():
  params, losses = _quick_distill_losses("bfloat16", num_steps=40)
  chex.assert_shape(losses, (40,))
  chex.assert_tree_all_finite(losses)
  chex.assert_tree_all_finite(params)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(params))
  # A fresh student against the exact teacher: its loss falls several-fold
  # in the first tens of steps. Late/early ratio of the 10-step means
  # (`measure`, benchmarks.spread, Intel Xeon, JAX 0.11.2, seeds 0-4): 0.28
  # 0.29 0.18 0.38 0.46, the same to 3 digits with --xla_cpu_max_isa=AVX2.
  # 0.7 sits a margin above the largest; a model that does not learn in
  # bfloat16 stays near 1.
  assert losses[-10:].mean() < 0.7 * losses[:10].mean(), losses


def test_masked_carry_over():
  mask_id = VOCAB
  model = _model(num_states=VOCAB + 1, mask_id=mask_id)
  x, t = _inputs(jax.random.PRNGKey(0), num_states=VOCAB + 1)
  x = x.at[:, ::2].set(mask_id)  # Guarantee both kinds of position.
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t), jax.random.PRNGKey(2))
  logits = np.asarray(model.apply(params, x, t))
  # No output column for the mask id.
  assert logits.shape == (3, LENGTH, VOCAB)
  assert np.all(np.isfinite(logits))
  x = np.asarray(x)
  unmasked = x != mask_id
  np.testing.assert_array_equal(logits.argmax(-1)[unmasked], x[unmasked])
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
  one_hot = np.eye(VOCAB, dtype=np.float32)[np.where(unmasked, x, 0)]
  np.testing.assert_array_equal(probs[unmasked], one_hot[unmasked])
  # Masked positions carry the network's (non-degenerate) prediction.
  assert np.all(probs[~unmasked].max(-1) < 1.0)


def test_invalid_mask_id_raises():
  with pytest.raises(ValueError, match="mask_id"):
    x, t = _inputs(jax.random.PRNGKey(0))
    _model(mask_id=3).init(jax.random.PRNGKey(1), x, t)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_student_from_teacher_matches_exactly(positions):
  teacher = _model(positions=positions, num_classes=3)
  student = _model(positions=positions, num_classes=3, latent=True)
  x, t = _inputs(jax.random.PRNGKey(0))
  labels = jnp.array([0, 1, 3], jnp.int32)
  lam0 = jnp.zeros((3,))
  t_params = teacher.init(jax.random.PRNGKey(1), x, t, labels=labels)
  t_params = _perturb(t_params, jax.random.PRNGKey(2))
  s_init = student.init(jax.random.PRNGKey(3), x, t, lam0, labels=labels)
  s_params = networks.student_params_from_teacher(t_params, s_init)
  assert networks.count_params(s_params) - networks.count_params(t_params) == networks.count_params(
    s_params["params"]["latent_embed"]
  )

  want = np.asarray(teacher.apply(t_params, x, t, labels=labels))
  for lam in (0.0, 0.3, 0.77, 1.0):
    lam_b = jnp.full((3,), lam)
    got = np.asarray(student.apply(s_params, x, t, lam_b, labels=labels))
    np.testing.assert_array_equal(got, want)

  # Once the latent path's last Dense is non-zero, lambda matters: so the
  # equality above is not vacuous.
  params = jax.tree_util.tree_map(lambda a: a, s_params)
  dense_out = params["params"]["latent_embed"]["dense_out"]
  dense_out["kernel"] = 0.5 * jax.random.normal(jax.random.PRNGKey(4), dense_out["kernel"].shape)
  a = student.apply(params, x, t, jnp.full((3,), 0.1), labels=labels)
  b = student.apply(params, x, t, jnp.full((3,), 0.9), labels=labels)
  assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3


def test_student_from_incompatible_teacher_raises():
  x, t = _inputs(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(1)
  # Only shapes matter here; eval_shape skips compiling new configurations.
  init = lambda m, *a: jax.eval_shape(m.init, key, x, t, *a)
  t_params = init(_model(width=16))
  s_params = init(_model(latent=True), jnp.zeros((3,)))
  with pytest.raises(ValueError, match=r"params/token_embed/embedding"):
    networks.student_params_from_teacher(t_params, s_params)
  # Different output vocabulary: only the output head differs.
  t_params = init(_model(vocab_size=VOCAB - 1))
  with pytest.raises(ValueError, match=r"params/logits/kernel") as err:
    networks.student_params_from_teacher(t_params, s_params)
  assert "token_embed" not in str(err.value)
  # A teacher that is itself a student is rejected too.
  with pytest.raises(ValueError, match="teacher has a latent path"):
    networks.student_params_from_teacher(s_params, s_params)


def test_lambda_argument_checks():
  x, t = _inputs(jax.random.PRNGKey(0))
  student = _model(latent=True)
  with pytest.raises(ValueError, match="lam"):
    student.init(jax.random.PRNGKey(1), x, t)
  teacher = _model()
  params = teacher.init(jax.random.PRNGKey(1), x, t)
  with pytest.raises(ValueError, match="lam"):
    teacher.apply(params, x, t, jnp.zeros((3,)))
  with pytest.raises(ValueError, match="labels"):
    teacher.apply(params, x, t, labels=jnp.zeros((3,), jnp.int32))


@pytest.mark.parametrize(
  "kw,field",
  [
    (dict(num_states=VOCAB - 1), "num_states"),
    (dict(width=30, heads=4), "width"),
    (dict(positions="alibi"), "positions"),
    (dict(width=12, heads=4), "head dim"),
  ],
)
def test_invalid_config_names_field(kw, field):
  x, t = _inputs(jax.random.PRNGKey(0), num_states=VOCAB - 1)
  with pytest.raises(ValueError, match=field):
    _model(**kw).init(jax.random.PRNGKey(1), x, t)


def test_invalid_inputs_raise():
  model = _model()
  x, t = _inputs(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="integer"):
    model.init(jax.random.PRNGKey(1), x.astype(jnp.float32), t)
  with pytest.raises(ValueError, match="shape"):
    model.init(jax.random.PRNGKey(1), x[:, :-1], t)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_attention_is_bidirectional(positions):
  model = _model(positions=positions)
  x, t = _inputs(jax.random.PRNGKey(0))
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t), jax.random.PRNGKey(2))
  x2 = x.at[:, -1].set((x[:, -1] + 1) % VOCAB)
  a = np.asarray(model.apply(params, x, t))
  b = np.asarray(model.apply(params, x2, t))
  assert np.max(np.abs(a[:, 0] - b[:, 0])) > 1e-4


def test_rope_breaks_permutation_invariance():
  # Without positional information a transformer is permutation equivariant;
  # rotary positions must break that.
  model = _model(positions="rope")
  x, t = _inputs(jax.random.PRNGKey(0))
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t), jax.random.PRNGKey(2))
  perm = np.random.default_rng(0).permutation(LENGTH)
  a = np.asarray(model.apply(params, x, t))[:, perm]
  b = np.asarray(model.apply(params, x[:, perm], t))
  assert np.max(np.abs(a - b)) > 1e-3


def test_dropout_only_in_training():
  model = _model(dropout=0.5)
  x, t = _inputs(jax.random.PRNGKey(0))
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t), jax.random.PRNGKey(2))
  a = model.apply(params, x, t)
  np.testing.assert_array_equal(a, model.apply(params, x, t))
  b = model.apply(params, x, t, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(a, b)


def test_overfits_four_examples():
  vocab, length = 8, 16
  model = networks.Transformer(
    num_states=vocab + 1, vocab_size=vocab, length=length, width=64, depth=2, heads=4
  )
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.randint(kx, (4, length), 0, vocab + 1, jnp.int32)
  y = jax.random.randint(ky, (4, length), 0, vocab, jnp.int32)
  t = jnp.full((4,), 0.5)
  # Jitted: this configuration is used only here, so eager per-op compiles
  # would not be shared with other tests.
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, t)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(p):
    logits = model.apply(p, x, t)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  for _ in range(200):
    params, opt_state, loss = step(params, opt_state)
  assert float(jax.jit(loss_fn)(params)) < 0.05


def test_flops_per_example_hand_count():
  model = networks.Transformer(
    num_states=5, vocab_size=4, length=3, width=8, depth=2, heads=2, mlp_ratio=2
  )
  # Per block, L=3, W=8: qkv 2*3*8*24 = 1152; scores 2*3*3*8 = 144;
  # values 144; out proj 2*3*8*8 = 384; MLP 2 * (2*3*8*16) = 1536.
  per_block = 1152 + 144 + 144 + 384 + 1536
  final = 2 * 3 * 8 * 4
  assert networks.flops_per_example(model) == 2 * per_block + final


@pytest.mark.parametrize("scope", [None, "blocks"])
def test_flops_match_xla_cost_analysis_roughly(scope):
  """Also for a local-latent student (latent_scope "blocks"), whose head runs per position."""
  kw = dict(latent=True, latent_dim=4, latent_scope=scope) if scope else {}
  model = networks.Transformer(
    num_states=9, vocab_size=8, length=32, width=64, depth=2, heads=4, **kw
  )
  x = jnp.zeros((1, 32), jnp.int32)
  t = jnp.zeros((1,))
  lam = jnp.zeros((1, 4)) if scope else None
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, lam=lam))
  # HLO cost analysis before compilation: cheap, and enough for a count.
  cost = jax.jit(lambda p: model.apply(p, x, t, lam=lam)).lower(params).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  if not cost or "flops" not in cost:
    pytest.skip("no XLA cost analysis on this backend")
  ours = networks.flops_per_example(model)
  # XLA also counts elementwise ops, norms, softmax and the conditioning MLP.
  assert ours <= cost["flops"] < 1.5 * ours


def test_count_params():
  params = {"a": jnp.zeros((2, 3)), "b": {"c": jnp.zeros((4,))}}
  assert networks.count_params(params) == 10
  model = networks.Transformer(
    num_states=5, vocab_size=4, length=3, width=8, depth=1, heads=2, mlp_ratio=2
  )
  params = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros((1,))
  )
  w, c = 8, 128
  expected = (
    (c * w + w)
    + (w * w + w)  # time MLP
    + 5 * w  # token embedding
    + (w * 6 * w + 6 * w)  # block adaLN
    + (w * 3 * w + 3 * w)
    + (w * w + w)  # qkv, out
    + (w * 2 * w + 2 * w)
    + (2 * w * w + w)  # MLP
    + (w * 2 * w + 2 * w)  # final adaLN
    + (w * 4 + 4)
  )  # logits
  assert networks.count_params(params) == expected


@pytest.mark.parametrize("entry", networks.LATENT_ENTRIES)
def test_every_latent_entry_starts_at_the_teacher(entry):
  teacher = _model()
  student = _model(latent=True, latent_entry=entry)
  x, t = _inputs(jax.random.PRNGKey(0))
  t_params = _perturb(teacher.init(jax.random.PRNGKey(1), x, t), jax.random.PRNGKey(2))
  s_params = networks.student_params_from_teacher(
    t_params, student.init(jax.random.PRNGKey(3), x, t, jnp.zeros((3,)))
  )
  want = np.asarray(teacher.apply(t_params, x, t))
  for lam in (0.0, 0.4, 1.0):
    np.testing.assert_array_equal(
      np.asarray(student.apply(s_params, x, t, jnp.full((3,), lam))), want
    )


def test_centred_latent_embedding_averages_to_zero_over_its_grid():
  """With any weights, the centred embedding's mean over the midpoint grid is
  0, so the conditioning averaged over lambda is the teacher's."""
  embed = networks.LatentEmbed(8, "centred")
  lam = (jnp.arange(networks.CENTRING_NODES) + 0.5) / networks.CENTRING_NODES
  params = embed.init(jax.random.PRNGKey(0), lam)
  params = jax.tree_util.tree_map(
    lambda a: a + jax.random.normal(jax.random.PRNGKey(1), a.shape), params
  )
  out = np.asarray(embed.apply(params, lam))
  assert np.abs(out).max() > 0.1
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)


def test_gate_entry_has_a_latent_dependent_gradient_at_the_start():
  """At the exact start (gate 0) the gate's gradient is sum_j g_j * e(lambda_j):
  non-zero, and different for different latents."""
  embed = networks.LatentEmbed(8, "gate")
  params = embed.init(jax.random.PRNGKey(0), jnp.zeros((1,)))
  g = jnp.linspace(-1.0, 1.0, 8)
  grad = lambda lam: jax.grad(lambda p: jnp.sum(g * embed.apply(p, lam)))(params)
  ga = np.asarray(grad(jnp.array([0.2]))["params"]["gate"])
  gb = np.asarray(grad(jnp.array([0.7]))["params"]["gate"])
  assert np.abs(ga).max() > 1e-3 and np.abs(ga - gb).max() > 1e-3
