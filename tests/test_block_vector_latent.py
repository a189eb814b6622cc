"""config.model.latent_block_dim: local latents with m coordinates per block.

What must hold: block g's logits depend on its own m coordinates (lam[:, g m : (g + 1) m]) and
on nothing else, bit for bit, and on each of them; the cost is the latent embedding's first
Dense, m times wider, and nothing else, so the exact starts are still the teacher; a denoiser
made from such a network takes k m coordinates (so every sampler, the loss and the marginals
draw that many) while its law stays a product of k block mixtures; m = 1 is the scalar path;
the field is validated (an int >= 1, local latents only), reaches the model and, when not 1,
the checkpoint signature; a quick distillation is finite.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mixture_dd import (
  configuration,
  denoisers,
  di4c,
  distill,
  networks,
  processes,
  runs,
  train_step,
)
from tests import test_local_latents as local_latents
from tests.conftest import perturbed_params
from tests.test_local_latents import B, D, K, _inputs

M = 2  # coordinates per block


def _model(entry="add", block_dim=M, **kw):
  return local_latents._model(entry=entry, block_dim=block_dim, **kw)


@pytest.mark.parametrize("entry", ["add", "centred", "gate"])
def test_block_g_depends_on_its_own_coordinates_only_and_on_each(entry):
  model = _model(entry)
  params = perturbed_params(train_step.init_params(model, 0), 1)
  x, t = _inputs()
  apply = jax.jit(lambda lam: model.apply({"params": params}, x, t, lam=lam))
  lam = jax.random.uniform(jax.random.key(2), (B, K * M))
  base = np.asarray(apply(lam))
  masked = np.asarray(x == 3)  # unmasked positions are carried over whatever lambda is
  size = D // K
  for g in range(K):
    inside = np.zeros(D, bool)
    inside[g * size : (g + 1) * size] = True
    for j in range(M):
      c = g * M + j
      moved = np.asarray(apply(lam.at[:, c].set(1.0 - lam[:, c])))
      np.testing.assert_array_equal(moved[:, ~inside], base[:, ~inside])
      assert np.abs(moved - base)[masked & inside[None]].max() > 1e-3, (g, j)


def test_the_cost_is_one_wider_dense_and_exact_starts_stay_the_teacher():
  scalar = train_step.init_params(_model(block_dim=1), 0)
  vector = train_step.init_params(_model(), 0)
  flat_s = dict(jax.tree_util.tree_flatten_with_path(scalar)[0])
  flat_v = dict(jax.tree_util.tree_flatten_with_path(vector)[0])
  assert set(flat_s) == set(flat_v)
  changed = {jax.tree_util.keystr(p) for p in flat_s if flat_s[p].shape != flat_v[p].shape}
  assert changed == {f"['{networks.LATENT_MODULE}']['dense_in']['kernel']"}
  kernel = vector[networks.LATENT_MODULE]["dense_in"]["kernel"]
  assert kernel.shape[0] == M * scalar[networks.LATENT_MODULE]["dense_in"]["kernel"].shape[0]

  teacher = local_latents._model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher, 0), 2)
  x, t = _inputs()
  want = np.asarray(jax.jit(teacher.apply)({"params": t_params}, x, t))
  for start in ("exact", "gate"):
    student = _model(configuration.entry_for_start(start))
    d = configuration.distill_preset("sdtt", student_start=start)
    s_params = di4c.initial_student(student, d, 3, t_params)
    apply = jax.jit(student.apply)
    for lam in denoisers.draw_latents(jax.random.key(4), (2, B), K * M):
      np.testing.assert_array_equal(np.asarray(apply({"params": s_params}, x, t, lam=lam)), want)


def test_the_denoiser_takes_k_m_coordinates_and_keeps_k_blocks():
  x, t = _inputs()
  for shift, shifts in (("none", 1), ("random", D // K)):
    model = _model(latent_shift=shift)
    assert model.lam_dim == K * M
    net = denoisers.from_network(model)
    assert (denoisers.latent_dim(net), denoisers.latent_blocks(net)) == (K * M, K)
    assert denoisers.latent_shifts(net) == shifts
    params = perturbed_params(train_step.init_params(model, 0), 3)
    for fn in (denoisers.mixture(net), denoisers.mixture_marginals(net, 4)):
      out = jax.jit(lambda p, fn=fn: fn(p, x, t, jax.random.key(3)))(params)
      assert out.shape == (B, D, 3) and np.all(np.isfinite(np.asarray(out)))
  # A global latent's lam_dim is latent_dim alone; one scalar per block: k.
  assert _model(block_dim=1).lam_dim == K
  params = train_step.init_params(_model(), 0)
  with pytest.raises(ValueError, match=f"latent_block_dim={M}"):
    _model().apply({"params": params}, x, t, lam=jnp.zeros((B, K)))


def test_the_network_refuses_a_block_dim_without_blocks_or_below_one():
  x, t = _inputs()
  for kw, match in (
    (dict(scope="global"), "latent_block_dim=2 .*latent_scope='blocks'"),
    (dict(block_dim=0), "latent_block_dim must be >= 1"),
  ):
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(lambda kw=kw: _model(**kw).init(jax.random.key(0), x, t, lam=jnp.zeros(B)))


def test_config_validates_and_signs_the_block_dim():
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = tiny_distill.get_config()
  c.data.length = 4  # two blocks of two
  c = runs.resolve(c)
  spec = pipeline.data_spec(c.data)
  with_ = lambda m, scope="blocks": ml_collections.ConfigDict(
    dict(
      c.to_dict(),
      model=dict(c.model.to_dict(), latent_dim=2, latent_scope=scope, latent_block_dim=m),
    )
  )
  configuration.validate(with_(3), spec)
  with pytest.raises(ValueError, match="model.latent_block_dim.*latent_scope=blocks"):
    configuration.validate(with_(3, "global"), spec)
  for bad in (0, 1.5):
    with pytest.raises(ValueError, match="model.latent_block_dim"):
      configuration.validate(with_(bad), spec)
  assert configuration.make_model(with_(3), spec, processes.Masked(3), True).lam_dim == 6
  assert configuration.make_model(with_(3), spec, processes.Masked(3), False).latent_block_dim == 1
  sig = lambda m: configuration.model_signature(with_(m), spec)
  assert sig(1) == sig(None)  # unset: 1, what earlier checkpoints read as
  assert sig(3)["model.latent_block_dim"] == 3 and "model.latent_block_dim" not in sig(1)


def test_quick_distill_with_vector_block_latents_gives_finite_losses():
  from mixture_dd.configs import tiny_distill

  c = tiny_distill.get_config()
  c.data.length = 4
  c.model.update(
    width=32,
    depth=1,
    heads=2,
    latent_dim=2,
    latent_scope="blocks",
    latent_shift="random",
    latent_block_dim=M,
  )
  c.distill.update(num_latents=4, latent_sampling="stratified")
  c.train.batch_size = 8
  res = distill.quick_distill(c, num_steps=20, chunk=20)
  assert res.setup.model.lam_dim == 2 * M
  assert np.all(np.isfinite(res.losses)) and len(res.losses) == 20
