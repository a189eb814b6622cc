"""A local student's trunk, run once for the L latents that share an input.

What must hold: `Transformer(shared_trunk=True)` with lam `[batch, n(, k)]` gives the logits
of n separate calls (fixed and rotating blocks, vector block latents, class labels, the mask
carry-over); `di4c.component_log_probs` on a shared `[B, D]` input gives what the L copies
give, chunked or not; the Di4C loss and its gradients are those of the L-copy pass; a network
whose latent enters the trunk (global) refuses it, and a wrong lam shape is named.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_dd import configuration, denoisers, di4c, processes, train_step
from tests.conftest import perturbed_params
from tests.test_local_latents import B, D, K, _inputs
from tests.test_local_latents import _model as local_model

N = 5  # latents per example
# On these perturbed weights (logits ~ 15) the same L-copy batch, eager against jitted, differs by
# 3e-4: float32 reassociation, which a different batch shape changes too. Components differ by ~27.
ATOL = 2e-3


@pytest.mark.parametrize(
  "shift, block_dim, classes",
  [("none", 1, 0), ("random", 1, 0), ("random", 2, 0), ("none", 1, 3)],
)
def test_shared_trunk_gives_the_logits_of_n_separate_calls(shift, block_dim, classes):
  model = local_model(latent_shift=shift, block_dim=block_dim).clone(num_classes=classes)
  params = perturbed_params(train_step.init_params(model, 0), 1)
  x, t = _inputs()
  lams = denoisers.draw_latents(jax.random.key(2), (B, N), K * block_dim)
  kw = {}
  if shift == "random":
    kw["block_offset"] = jnp.array([0, 1, 1], jnp.int32)
  if classes:
    kw["labels"] = jnp.array([0, 2, 3], jnp.int32)
  got = jax.jit(lambda: model.apply({"params": params}, x, t, lam=lams, shared_trunk=True, **kw))()
  assert got.shape == (B, N, D, 3)
  rep = lambda a: jnp.repeat(a, N, axis=0)
  want = model.apply(
    {"params": params},
    rep(x),
    rep(t),
    lam=lams.reshape((B * N,) + lams.shape[2:]),
    **{name: rep(v) for name, v in kw.items()},
  ).reshape(got.shape)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=ATOL, rtol=0)
  # n latents are n distinct components (so the comparison above is not of n copies of one)
  assert np.abs(np.asarray(got[:, 0] - got[:, 1]))[np.asarray(x == 3)].max() > 100 * ATOL


@pytest.mark.parametrize("chunks", [1, 5])
def test_component_log_probs_on_a_shared_input_is_the_l_copy_pass(chunks):
  model = local_model(latent_shift="random")
  params = perturbed_params(train_step.init_params(model, 0), 3)
  comp = denoisers.from_network(model)
  x, t = _inputs()
  lam = denoisers.draw_latents(jax.random.key(4), (B, N), K)
  off = jnp.array([1, 0, 1], jnp.int32)
  key = jax.random.key(5)
  shared = di4c.component_log_probs(comp, params, x, t, lam, None, key, chunks, block_offset=off)
  copies = di4c.component_log_probs(
    denoisers.without_components(comp),
    params,
    jnp.repeat(x[:, None], N, 1),
    jnp.repeat(t[:, None], N, 1),
    lam,
    None,
    key,
    chunks,
    block_offset=off,
  )
  assert shared.shape == copies.shape == (B, N, D, 3)
  np.testing.assert_allclose(np.asarray(shared), np.asarray(copies), atol=ATOL, rtol=0)
  # a component without the shared path gets the L copies itself
  fallback = di4c.component_log_probs(
    denoisers.without_components(comp), params, x, t, lam, None, key, chunks, block_offset=off
  )
  np.testing.assert_array_equal(np.asarray(fallback), np.asarray(copies))


def test_di4c_loss_and_gradients_match_the_l_copy_pass():
  model = local_model(latent_shift="random", latent_positions="learned")
  teacher_model = local_model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher_model, 0), 6)
  teacher = di4c.network_teacher(teacher_model, t_params)
  cfg = configuration.distill_preset("cpu_small", num_latents=4, latent_sampling="stratified")
  params = perturbed_params(train_step.init_params(model, 0), 7)
  proc = processes.Masked(3, "linear")
  x0 = jnp.array([[0, 1, 2, 0, 1, 2], [2, 2, 1, 0, 0, 1], [1, 0, 2, 2, 1, 0]], jnp.int32)
  batch, key = {"tokens": x0}, jax.random.key(8)

  def value_and_grad(student):
    loss_fn = di4c.di4c_loss(student, teacher, proc, cfg)
    return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, batch, key, teacher.frozen)[0]))(params)

  shared = denoisers.from_network(model, train=True)
  assert shared.components is not None
  (loss_s, grad_s), (loss_c, grad_c) = (
    value_and_grad(shared),
    value_and_grad(denoisers.without_components(shared)),
  )
  assert np.isfinite(float(loss_s))
  np.testing.assert_allclose(float(loss_s), float(loss_c), rtol=1e-5)
  for g_s, g_c in zip(jax.tree.leaves(grad_s), jax.tree.leaves(grad_c)):
    np.testing.assert_allclose(np.asarray(g_s), np.asarray(g_c), atol=1e-4, rtol=1e-3)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_s)) > 1e-4


def test_a_trunk_that_sees_the_latent_refuses_and_bad_shapes_are_named():
  x, t = _inputs()
  glob = local_model(scope="global", k=1)
  params = train_step.init_params(glob, 0)
  with pytest.raises(ValueError, match="latent_scope='blocks'"):
    glob.apply({"params": params}, x, t, lam=jnp.zeros((B, N)), shared_trunk=True)
  assert not hasattr(denoisers.from_network(glob), "components")
  local = local_model(block_dim=2)
  params = train_step.init_params(local, 0)
  with pytest.raises(ValueError, match=r"\[batch=3, n, lam_dim=6\]"):
    local.apply({"params": params}, x, t, lam=jnp.zeros((B * N, K * 2)), shared_trunk=True)
  with pytest.raises(ValueError, match="lam must have shape"):
    local.apply({"params": params}, x, t, lam=jnp.zeros((B, N, K)), shared_trunk=True)


def test_with_dropout_the_n_latents_share_the_mask_of_one_call():
  """In train mode the trunk's dropout is drawn once per example: component j is, bit for bit
  up to float reassociation, the single call at lam_j with the same key (whose one trunk draws
  that mask), where n copies in one batch would each have drawn their own."""
  model = local_model().clone(dropout=0.3)
  params = perturbed_params(train_step.init_params(model, 0), 9)
  x, t = _inputs()
  lams = denoisers.draw_latents(jax.random.key(10), (B, N), K)
  rngs = {"dropout": jax.random.key(11)}
  apply = lambda lam, **kw: model.apply(
    {"params": params}, x, t, lam=lam, train=True, rngs=rngs, **kw
  )
  got = apply(lams, shared_trunk=True)
  assert got.shape == (B, N, D, 3)
  for j in range(N):
    np.testing.assert_allclose(np.asarray(got[:, j]), np.asarray(apply(lams[:, j])), atol=ATOL)
  eval_mode = model.apply({"params": params}, x, t, lam=lams[:, 0])
  assert np.abs(np.asarray(got[:, 0] - eval_mode))[np.asarray(x == 3)].max() > 100 * ATOL
