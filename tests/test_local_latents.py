"""Local latents (config.model.latent_scope = "blocks").

The positions are k contiguous blocks; coordinate g of lambda in [0, 1]^k
conditions block g alone, so the student's law is a product of k block
mixtures and its likelihood is scored block by block. What must hold: the
network's block g never sees another block's coordinate, the exact starts
are the teacher, the block likelihood and its total correlation are the
enumerated ones, and the field reaches the loss, the config and the
checkpoint signature.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mixture_dd import (
  checkpoints,
  configuration,
  denoisers,
  di4c,
  distill,
  exact,
  losses,
  networks,
  processes,
  runs,
  train_step,
)
from tests.conftest import perturbed_params, random_log_probs

B, D, K = 3, 6, 3  # 3 blocks of 2 positions


def _model(
  latent=True,
  entry="add",
  scope="blocks",
  k=K,
  depth=1,
  positions="learned",
  latent_positions="none",
  latent_shift="none",
  block_dim=1,
):
  return networks.Transformer(
    num_states=4,
    vocab_size=3,
    length=D,
    width=32,
    depth=1,
    heads=2,
    positions=positions,
    latent=latent,
    latent_entry=entry,
    mask_id=3,
    latent_dim=k if latent else 1,
    latent_scope=scope if latent else "global",
    latent_depth=depth,
    latent_positions=latent_positions,
    latent_shift=latent_shift if latent else "none",
    latent_block_dim=block_dim if latent else 1,
  )


def _inputs():
  x = jnp.array([[3] * D, [0, 3, 1, 3, 3, 2], [3, 2, 3, 1, 0, 3]], jnp.int32)
  return x, jnp.array([0.9, 0.5, 0.2])


def assert_blocks_local(model):
  """Moving lambda_g changes block g's logits and no other position's, bit for bit (perturbed
  weights, so no path is trivially 0); shared by every block-path variant's test."""
  params = perturbed_params(train_step.init_params(model, 0), 1)
  x, t = _inputs()
  apply = jax.jit(lambda lam: model.apply({"params": params}, x, t, lam=lam))
  lam = jax.random.uniform(jax.random.key(2), (B, K))
  base = np.asarray(apply(lam))
  for g in range(K):
    moved = np.asarray(apply(lam.at[:, g].set(1.0 - lam[:, g])))
    inside = np.zeros(D, bool)
    inside[g * (D // K) : (g + 1) * (D // K)] = True
    np.testing.assert_array_equal(moved[:, ~inside], base[:, ~inside])
    masked = np.asarray(x == 3)  # unmasked positions are carried over whatever lambda is
    assert np.abs(moved - base)[masked & inside[None]].max() > 1e-3, g


@pytest.mark.parametrize("entry", ["add", "centred", "gate"])
def test_block_g_depends_on_its_own_coordinate_only(entry):
  """Moving lambda_g changes block g's logits and no other position's, bit for bit."""
  assert_blocks_local(_model(entry=entry))


def test_denoiser_carries_its_blocks():
  model = _model()
  net = denoisers.from_network(model)
  assert denoisers.latent_dim(net) == K and denoisers.latent_blocks(net) == K
  labelled = denoisers.with_labels(net, jnp.zeros(B, jnp.int32))
  assert denoisers.latent_blocks(labelled) == K
  assert denoisers.latent_blocks(denoisers.from_network(_model(scope="global"))) == 1
  params = train_step.init_params(model, 0)
  x, t = _inputs()
  for fn in (denoisers.mixture(net), denoisers.mixture_marginals(net, 4)):
    assert jax.eval_shape(lambda: fn(params, x, t, jax.random.key(3))).shape == (B, D, 3)
  with pytest.raises(ValueError, match="divides 6"):
    jax.eval_shape(lambda: _model(k=4).init(jax.random.key(0), x, t, lam=jnp.zeros((B, 4))))
  with pytest.raises(ValueError, match="latent_scope"):
    jax.eval_shape(lambda: _model(scope="local").init(jax.random.key(0), x, t, lam=lam_zero()))


def lam_zero():
  return jnp.zeros((B, K))


@pytest.mark.parametrize("start", ["exact", "gate"])
def test_exact_starts_are_the_teacher_at_step_0(start):
  teacher = _model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher, 0), 2)
  x, t = _inputs()
  want = np.asarray(jax.jit(teacher.apply)({"params": t_params}, x, t))
  student = _model(entry=configuration.entry_for_start(start))
  d = configuration.distill_preset("sdtt", student_start=start)
  s_params = di4c.initial_student(student, d, 3, t_params)
  apply = jax.jit(student.apply)
  for lam in denoisers.draw_latents(jax.random.key(4), (3, B), K):
    np.testing.assert_array_equal(np.asarray(apply({"params": s_params}, x, t, lam=lam)), want)


def _block_law(lp_b, states, k):
  """The product over k blocks of each block's uniform L-mixture, in float64: `[S^D]`."""
  l, d, _ = lp_b.shape
  p = np.exp(np.asarray(lp_b, np.float64))
  size = d // k
  law = np.ones(len(states))
  for g in range(k):
    pos = np.arange(g * size, (g + 1) * size)
    comp = np.prod(p[:, pos, states[:, pos]], axis=-1)  # [L, S^D]
    law *= comp.mean(0)
  return law


def test_block_likelihood_is_the_enumerated_product_of_block_mixtures():
  """exp of the blocked mixture likelihood is a distribution (sums to 1 over
  S^D), equals the product of block mixtures, and its marginals are the
  mixture's marginals; blocks = 1 is the unblocked estimate."""
  b, l, d, s, k = 2, 4, 4, 3, 2
  lp = random_log_probs(jax.random.key(1), b, l, d, s)
  states = exact.enumerate_states(s, d)
  x = jnp.broadcast_to(jnp.asarray(states)[None], (b,) + states.shape)
  got = np.exp(np.asarray(losses.mixture_log_likelihood(lp, x, blocks=k), np.float64))
  lpbar = np.asarray(losses.mixture_log_marginals(lp), np.float64)
  for bi in range(b):
    law = _block_law(lp[bi], states, k)
    np.testing.assert_allclose(got[bi], law, rtol=2e-5)
    assert abs(got[bi].sum() - 1.0) < 1e-5
    for pos in range(d):
      marg = np.array([law[states[:, pos] == a].sum() for a in range(s)])
      np.testing.assert_allclose(np.log(marg), lpbar[bi, pos], atol=1e-5)
  np.testing.assert_allclose(
    losses.mixture_log_likelihood(lp, x, blocks=1), losses.mixture_log_likelihood(lp, x), atol=0
  )
  # The blocked C is the sum of each block's own C.
  c = losses.correlation(lp, x, blocks=k)
  per_block = sum(
    losses.correlation(lp[:, :, g * 2 : g * 2 + 2], x[:, :, g * 2 : g * 2 + 2]) for g in range(k)
  )
  np.testing.assert_allclose(c, per_block, atol=1e-4)


def test_blocked_total_correlation_is_the_enumerated_one():
  """The sampled TC with blocks = 2 against the product of block mixtures'
  enumerated TC, within 5 standard errors of the estimator (enumerated too);
  with blocks = 2 it is the sum of the blocks' TCs, which the unblocked
  estimate of the same components does not see."""
  b, l, d, s, k, draws = 2, 4, 4, 3, 2, 20000
  lp = random_log_probs(jax.random.key(4), b, l, d, s)
  states = exact.enumerate_states(s, d)
  lp64 = np.asarray(lp, np.float64)
  got = np.asarray(di4c.mixture_total_correlation(jax.random.key(5), lp, draws, blocks=k))
  unblocked = np.asarray(di4c.mixture_total_correlation(jax.random.key(5), lp, draws))
  for bi in range(b):
    law = _block_law(lp64[bi], states, k)
    lpbar = np.log(np.exp(lp64[bi]).mean(0))
    c = np.log(law) - np.sum(lpbar[np.arange(d), states], axis=-1)
    tc = np.sum(law * c)
    se = np.sqrt((np.sum(law * c**2) - tc**2) / draws)
    assert tc > 0.05 and abs(got[bi] - tc) < 5 * se, (bi, got[bi], tc, se)
    assert abs(unblocked[bi] - tc) > 10 * se, (bi, unblocked[bi], tc)


def test_di4c_loss_scores_a_block_student_block_by_block():
  """The loss draws [B L, k] latents for a block student and its data term is
  the blocked C of the components it computed (recomputed here from the
  student's first call), not the unblocked one."""
  proc = processes.Masked(3, "linear")
  calls = []

  def student(params, x, t, key, lam=None, labels=None):
    calls.append((t, lam))
    per_pos = jnp.repeat(lam, D // K, axis=1)  # [N, D]: each position its block's coordinate
    return params * jnp.stack([per_pos, 1.0 - per_pos, 0.5 * per_pos], -1)

  student.latent_dim = K
  student.latent_blocks = K
  product = denoisers.from_function(lambda p, x, t: jnp.zeros(x.shape + (3,)))
  teacher = di4c.Teacher(product, jnp.float32(0.0), "product")
  cfg = configuration.distill_preset("sdtt", num_latents=4, data_weight=1.0, alpha_scale=1.0)
  x0 = jnp.array([[0, 1, 2, 0, 1, 2]] * B, jnp.int32)
  _, m = di4c.di4c_loss(student, teacher, proc, cfg)(
    jnp.float32(3.0), {"tokens": x0}, jax.random.key(0), teacher.frozen
  )
  assert {lam.shape for _, lam in calls} == {(B * 4, K)}
  t, lam = calls[0]  # the student at t, with gradient: the pass every C is taken on
  lp = jax.nn.log_softmax(student(jnp.float32(3.0), None, t, None, lam=lam), -1)
  lp = lp.reshape(B, 4, D, 3)
  alpha = jax.nn.sigmoid(20.0 * (t.reshape(B, 4)[:, 0] - 0.5))
  blocked = float(jnp.mean(losses.data_correlation_term(lp, x0, alpha, blocks=K)))
  whole = float(jnp.mean(losses.data_correlation_term(lp, x0, alpha)))
  np.testing.assert_allclose(float(m["data_correlation"]), blocked, rtol=1e-5)
  assert abs(blocked - whole) > 0.1 * abs(whole), (blocked, whole)


def test_config_validates_and_signs_the_scope():
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = runs.resolve(tiny_distill.get_config())
  spec = pipeline.data_spec(c.data)
  with_ = lambda k, scope: ml_collections.ConfigDict(
    dict(c.to_dict(), model=dict(c.model.to_dict(), latent_dim=k, latent_scope=scope))
  )
  sig = lambda k, scope: configuration.model_signature(with_(k, scope), spec)
  assert sig(2, "global") == sig(2, None)  # unset: global, as before the field
  for saved, wanted in ((sig(2, "global"), sig(2, "blocks")), (sig(2, "blocks"), sig(2, None))):
    with pytest.raises(checkpoints.IncompatibleCheckpoint, match="latent_scope"):
      checkpoints.check_signature(saved, wanted, "w")
  configuration.validate(with_(spec.length, "blocks"), spec)
  with pytest.raises(ValueError, match="model.latent_scope"):
    configuration.validate(with_(1, "local"), spec)
  with pytest.raises(ValueError, match="divisor"):
    configuration.validate(with_(spec.length + 1, "blocks"), spec)
  assert (
    configuration.make_model(with_(2, "blocks"), spec, processes.Masked(3), True).latent_scope
    == "blocks"
  )


def test_quick_distill_with_local_latents_gives_finite_losses():
  from mixture_dd.configs import tiny_distill

  c = tiny_distill.get_config()
  c.model.update(width=32, depth=1, heads=2, latent_dim=3, latent_scope="blocks")
  c.distill.update(num_latents=4)
  c.train.batch_size = 8
  res = distill.quick_distill(c, num_steps=20, chunk=20)
  assert res.setup.model.latent_scope == "blocks"
  assert "head_mlp_in" in res.params[networks.LATENT_MODULE]
  assert np.all(np.isfinite(res.losses)) and len(res.losses) == 20
