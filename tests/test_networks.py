"""Tests for mixture_dd.networks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixture_dd import networks

VOCAB = 8
LENGTH = 12


def _model(**kw):
  cfg = dict(num_states=VOCAB, vocab_size=VOCAB, length=LENGTH, width=32,
             depth=2, heads=4)
  cfg.update(kw)
  return networks.Denoiser(**cfg)


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
  leaves = [l + scale * jax.random.normal(k, l.shape, l.dtype)
            for l, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_output_shape_and_dtype(positions, num_classes):
  model = _model(positions=positions, num_classes=num_classes)
  x, t = _inputs(jax.random.PRNGKey(0))
  labels = None if num_classes == 0 else jnp.array([0, 4, 5], jnp.int32)
  params = model.init(jax.random.PRNGKey(1), x, t, labels=labels)
  logits = model.apply(_perturb(params, jax.random.PRNGKey(2)), x, t,
                       labels=labels)
  assert logits.shape == (3, LENGTH, VOCAB)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  if num_classes:
    # Labels matter once the class embedding is non-trivial.
    other = model.apply(_perturb(params, jax.random.PRNGKey(2)), x, t,
                        labels=jnp.array([1, 2, 3], jnp.int32))
    assert not np.allclose(logits, other)


def test_bfloat16_activations_keep_float32_params_and_logits():
  model = _model(dtype=jnp.bfloat16)
  x, t = _inputs(jax.random.PRNGKey(0))
  params = model.init(jax.random.PRNGKey(1), x, t)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(params))
  logits = model.apply(_perturb(params, jax.random.PRNGKey(2)), x, t)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_masked_carry_over():
  mask_id = VOCAB
  model = _model(num_states=VOCAB + 1, mask_id=mask_id)
  x, t = _inputs(jax.random.PRNGKey(0), num_states=VOCAB + 1)
  x = x.at[:, ::2].set(mask_id)  # Guarantee both kinds of position.
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t),
                    jax.random.PRNGKey(2))
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
  assert (networks.count_params(s_params) - networks.count_params(t_params)
          == networks.count_params(s_params["params"]["latent_embed"]))

  want = np.asarray(teacher.apply(t_params, x, t, labels=labels))
  for lam in (0.0, 0.3, 0.77, 1.0):
    lam_b = jnp.full((3,), lam)
    got = np.asarray(student.apply(s_params, x, t, lam_b, labels=labels))
    np.testing.assert_array_equal(got, want)

  # Once the latent path's last Dense is non-zero, lambda matters: so the
  # equality above is not vacuous.
  params = jax.tree_util.tree_map(lambda a: a, s_params)
  dense_out = params["params"]["latent_embed"]["dense_out"]
  dense_out["kernel"] = 0.5 * jax.random.normal(
      jax.random.PRNGKey(4), dense_out["kernel"].shape)
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


@pytest.mark.parametrize("kw,field", [
    (dict(num_states=VOCAB - 1), "num_states"),
    (dict(width=30, heads=4), "width"),
    (dict(positions="alibi"), "positions"),
    (dict(width=12, heads=4), "head dim"),
])
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
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t),
                    jax.random.PRNGKey(2))
  x2 = x.at[:, -1].set((x[:, -1] + 1) % VOCAB)
  a = np.asarray(model.apply(params, x, t))
  b = np.asarray(model.apply(params, x2, t))
  assert np.max(np.abs(a[:, 0] - b[:, 0])) > 1e-4


def test_rope_breaks_permutation_invariance():
  # Without positional information a transformer is permutation equivariant;
  # rotary positions must break that.
  model = _model(positions="rope")
  x, t = _inputs(jax.random.PRNGKey(0))
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t),
                    jax.random.PRNGKey(2))
  perm = np.random.default_rng(0).permutation(LENGTH)
  a = np.asarray(model.apply(params, x, t))[:, perm]
  b = np.asarray(model.apply(params, x[:, perm], t))
  assert np.max(np.abs(a - b)) > 1e-3


def test_dropout_only_in_training():
  model = _model(dropout=0.5)
  x, t = _inputs(jax.random.PRNGKey(0))
  params = _perturb(model.init(jax.random.PRNGKey(1), x, t),
                    jax.random.PRNGKey(2))
  a = model.apply(params, x, t)
  np.testing.assert_array_equal(a, model.apply(params, x, t))
  b = model.apply(params, x, t, train=True,
                  rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(a, b)


def test_overfits_four_examples():
  vocab, length = 8, 16
  model = networks.Denoiser(num_states=vocab + 1, vocab_size=vocab,
                            length=length, width=64, depth=2, heads=4)
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
  model = networks.Denoiser(num_states=5, vocab_size=4, length=3, width=8,
                            depth=2, heads=2, mlp_ratio=2)
  # Per block, L=3, W=8: qkv 2*3*8*24 = 1152; scores 2*3*3*8 = 144;
  # values 144; out proj 2*3*8*8 = 384; MLP 2 * (2*3*8*16) = 1536.
  per_block = 1152 + 144 + 144 + 384 + 1536
  final = 2 * 3 * 8 * 4
  assert networks.flops_per_example(model) == 2 * per_block + final


def test_flops_match_xla_cost_analysis_roughly():
  model = networks.Denoiser(num_states=9, vocab_size=8, length=32, width=64,
                            depth=2, heads=4)
  x = jnp.zeros((1, 32), jnp.int32)
  t = jnp.zeros((1,))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)
  # HLO cost analysis before compilation: cheap, and enough for a count.
  cost = jax.jit(model.apply).lower(params, x, t).cost_analysis()
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
  model = networks.Denoiser(num_states=5, vocab_size=4, length=3, width=8,
                            depth=1, heads=2, mlp_ratio=2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 3), jnp.int32), jnp.zeros((1,)))
  w, c = 8, 128
  expected = (
      (c * w + w) + (w * w + w)          # time MLP
      + 5 * w                            # token embedding
      + (w * 6 * w + 6 * w)              # block adaLN
      + (w * 3 * w + 3 * w) + (w * w + w)  # qkv, out
      + (w * 2 * w + 2 * w) + (2 * w * w + w)  # MLP
      + (w * 2 * w + 2 * w)              # final adaLN
      + (w * 4 + 4))                     # logits
  assert networks.count_params(params) == expected


@pytest.mark.parametrize("entry", networks.LATENT_ENTRIES)
def test_every_latent_entry_starts_at_the_teacher(entry):
  teacher = _model()
  student = _model(latent=True, latent_entry=entry)
  x, t = _inputs(jax.random.PRNGKey(0))
  t_params = _perturb(teacher.init(jax.random.PRNGKey(1), x, t), jax.random.PRNGKey(2))
  s_params = networks.student_params_from_teacher(
      t_params, student.init(jax.random.PRNGKey(3), x, t, jnp.zeros((3,))))
  want = np.asarray(teacher.apply(t_params, x, t))
  for lam in (0.0, 0.4, 1.0):
    np.testing.assert_array_equal(np.asarray(student.apply(s_params, x, t, jnp.full((3,), lam))),
                                  want)


def test_centred_latent_embedding_averages_to_zero_over_its_grid():
  """With any weights, the centred embedding's mean over the midpoint grid is
  0, so the conditioning averaged over lambda is the teacher's."""
  embed = networks.LatentEmbed(8, "centred")
  lam = (jnp.arange(networks.CENTRING_NODES) + 0.5) / networks.CENTRING_NODES
  params = embed.init(jax.random.PRNGKey(0), lam)
  params = jax.tree_util.tree_map(
      lambda a: a + jax.random.normal(jax.random.PRNGKey(1), a.shape), params)
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
