"""The vector latent: lambda in [0, 1]^k (config.model.latent_dim = k).

k = 1 is the paper's scalar latent and must stay what it was; k > 1 must
reach every place that draws or integrates lambda: the network, the
denoisers' draws, the Di4C loss, the exact toolkit and the checkpoint
signature.
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
  networks,
  processes,
  runs,
  train_step,
)
from tests.conftest import perturbed_params

B = 5


def _model(latent=True, k=1, entry="add"):
  return networks.Transformer(
    num_states=4,
    vocab_size=3,
    length=3,
    width=32,
    depth=1,
    heads=2,
    positions="learned",
    latent=latent,
    latent_entry=entry,
    mask_id=3,
    latent_dim=k,
  )


def _inputs():
  x = jnp.array([[3, 3, 3], [0, 3, 1], [3, 2, 3], [1, 1, 3], [2, 3, 0]], jnp.int32)
  return x, jnp.array([0.9, 0.5, 0.2, 0.7, 0.4])


@pytest.mark.parametrize(
  "k, entry", [(1, "add"), (2, "add"), (4, "add"), (2, "centred"), (4, "gate")]
)
def test_shapes_and_draws(k, entry):
  model = _model(k=k, entry=entry)
  params = train_step.init_params(model, 0)
  assert params["latent_embed"]["dense_in"]["kernel"].shape == (128 * k, 32)
  x, t = _inputs()
  lam = denoisers.draw_latents(jax.random.key(1), (B,), k)
  assert lam.shape == ((B,) if k == 1 else (B, k))
  net = denoisers.from_network(model)
  assert denoisers.latent_dim(net) == k
  assert denoisers.latent_dim(denoisers.with_labels(net, jnp.zeros(B, jnp.int32))) == k
  assert jax.eval_shape(lambda: net(params, x, t, None, lam=lam)).shape == (B, 3, 3)
  mix = denoisers.mixture(net)
  assert jax.eval_shape(lambda: mix(params, x, t, jax.random.key(2))).shape == (B, 3, 3)
  marg = denoisers.mixture_marginals(net, 4)
  assert jax.eval_shape(lambda: marg(params, x, t, jax.random.key(3))).shape == (B, 3, 3)
  bad = jnp.zeros((B,) if k > 1 else (B, 2))
  with pytest.raises(ValueError, match="latent_dim"):
    jax.eval_shape(lambda: net(params, x, t, None, lam=bad))


def test_scalar_draws_are_the_old_draws():
  """k = 1 draws the same numbers, from the same key, as the scalar code did."""
  key = jax.random.key(7)
  np.testing.assert_array_equal(
    denoisers.draw_latents(key, (3, 4)), jax.random.uniform(key, (3, 4))
  )
  assert denoisers.draw_latents(key, (3, 4), 2).shape == (3, 4, 2)


@pytest.mark.parametrize("entry", ["add", "centred"])
def test_k_latent_network_contains_the_scalar_network(entry):
  """A k = 2 network whose second coordinate's input rows are zero IS the
  k = 1 network with the same weights, at [batch] and at [batch, 1] lam:
  the first coordinate's embedding is the scalar path's, bit for bit."""
  x, t = _inputs()
  one, two = _model(k=1, entry=entry), _model(k=2, entry=entry)
  p1 = perturbed_params(train_step.init_params(one, 0), 1)
  p2 = jax.tree.map(lambda a: a, p1)
  kern = p1["latent_embed"]["dense_in"]["kernel"]
  p2["latent_embed"]["dense_in"]["kernel"] = jnp.concatenate([kern, jnp.zeros_like(kern)])
  apply = jax.jit(lambda m, p, lam: m.apply({"params": p}, x, t, lam=lam), static_argnums=0)
  lam = jax.random.uniform(jax.random.key(4), (B,))
  want = np.asarray(apply(one, p1, lam))
  lam2 = jnp.stack([lam, jax.random.uniform(jax.random.key(5), (B,))], -1)
  np.testing.assert_array_equal(np.asarray(apply(one, p1, lam[:, None])), want)
  np.testing.assert_allclose(np.asarray(apply(two, p2, lam2)), want, atol=1e-6)
  # and the second coordinate matters once its rows are not zero
  p2["latent_embed"]["dense_in"]["kernel"] = jnp.concatenate([kern, kern])
  assert np.abs(np.asarray(apply(two, p2, lam2)) - want).max() > 1e-3


def test_exact_starts_are_the_teacher_at_step_0_for_k_2():
  """The "exact" and "gate" starts (zero last projection / zero gate) give,
  for every lambda in [0, 1]^2, the teacher's logits bit for bit."""
  teacher = _model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher, 0), 2)
  x, t = _inputs()
  want = np.asarray(jax.jit(teacher.apply)({"params": t_params}, x, t))
  for start in ("exact", "gate"):
    student = _model(k=2, entry=configuration.entry_for_start(start))
    d = configuration.distill_preset("sdtt", student_start=start)
    s_params = di4c.initial_student(student, d, 3, t_params)
    apply = jax.jit(student.apply)
    for lam in denoisers.draw_latents(jax.random.key(4), (3, B), 2):
      np.testing.assert_array_equal(np.asarray(apply({"params": s_params}, x, t, lam=lam)), want)


def test_centred_embedding_averages_to_zero_over_its_lattice():
  """k = 2: the centring lattice projects onto the k = 1 midpoint grid in
  each coordinate, and with any weights the embedding's mean over it is 0."""
  n, k = networks.CENTRING_NODES, 2
  grid = (networks.latent_lattice(n, k) + 0.5 / n) % 1.0
  for i in range(k):
    np.testing.assert_allclose(np.sort(grid[:, i]), (np.arange(n) + 0.5) / n)
  embed = networks.LatentEmbed(8, "centred", latent_dim=k)
  lam = jnp.asarray(grid, jnp.float32)
  params = perturbed_params(embed.init(jax.random.key(0), lam), 1)
  out = np.asarray(embed.apply(params, lam))
  assert np.abs(out).max() > 0.1
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)


def test_mixture_marginal_latents_are_stratified_in_every_coordinate():
  """mixture_marginals at k = 3: each example's L latents put one point in
  each of the L bins of every coordinate."""
  seen = []

  def component(params, x, t, key, lam=None, labels=None):
    seen.append(lam)
    return jnp.zeros(x.shape + (3,))

  component.latent_dim = 3
  num_l = 8
  x, t = _inputs()
  denoisers.mixture_marginals(component, num_l)(None, x, t, jax.random.key(0))
  lam = np.asarray(seen[0]).reshape(B, num_l, 3)
  assert lam.min() >= 0 and lam.max() < 1
  for b in range(B):
    for i in range(3):
      np.testing.assert_array_equal(np.sort(np.floor(lam[b, :, i] * num_l)), np.arange(num_l))
  assert len({tuple(r) for r in np.round(lam[:, 0], 6)}) == B  # a fresh offset per example


def test_vector_latent_nodes_are_a_centred_lattice():
  """k > 1: equal weights, every coordinate's projection the midpoint rule,
  and a smooth integrand close to its integral (E[l1 l2 l3 l4] = 1/16:
  error 7e-5 measured with these 1024 nodes; 1e-3 allowed). k = 1 stays
  Gauss-Legendre."""
  x, w = exact.latent_nodes(8)
  np.testing.assert_allclose(x, 0.5 * (np.polynomial.legendre.leggauss(8)[0] + 1))
  n = 1024
  x, w = exact.latent_nodes(n, 4)
  assert x.shape == (n, 4) and np.allclose(w, 1.0 / n)
  for i in range(4):
    np.testing.assert_allclose(np.sort(x[:, i]), (np.arange(n) + 0.5) / n)
  assert abs(np.sum(w * np.prod(x, -1)) - 1 / 16) < 1e-3


def _ideal_fn(proc, probs):
  fn = jax.jit(lambda x, t: exact.ideal_log_marginals(proc, probs, 3, x, t))
  return lambda x, t: np.asarray(fn(x, t))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_exact_law_of_a_lambda_blind_mixture_is_the_product_law(k):
  proc = processes.Masked(3, "linear")
  probs = exact.make_family("dirichlet", 3, 3, seed=0)
  ideal = _ideal_fn(proc, probs)
  product, _ = exact.sampler_distribution(
    proc, lambda x, t, lam: ideal(x, t), 3, np.linspace(1.0, 0.0, 3)
  )

  def blind(x, t, lam):
    assert np.shape(lam) == (() if k == 1 else (k,))
    return ideal(x, t)

  blind.latent_dim = k
  law, _ = exact.sampler_distribution(proc, blind, 3, np.linspace(1.0, 0.0, 3), num_latent_nodes=16)
  np.testing.assert_allclose(law, product, atol=1e-12)


def test_exact_law_of_a_two_latent_mixture_against_its_closed_form():
  """One step from all-mask, components linear in the latents: x^1, x^3
  depend on lambda_1 and x^2 on lambda_2, so the law is
  (a2 + b2) / 2 * (a1 a3 / 3 + (a1 b3 + b1 a3) / 6 + b1 b3 / 3)
  with a_d = A[d, x^d], b_d = B[d, x^d]. Measured error with 256 lattice
  nodes: 5.2e-5 (1e-3 at 64, 1.3e-4 at 1024); allowed 5e-4. Feeding both
  coordinates the same lambda is off by 0.022."""
  proc = processes.Masked(3, "linear")
  rng = np.random.default_rng(0)
  a, b = rng.dirichlet(np.ones(3), size=3), rng.dirichlet(np.ones(3), size=3)  # [D, S]

  def fn(x, t, lam):
    w = np.array([lam[0], lam[1], lam[0]])[:, None]
    return np.broadcast_to(np.log(w * a + (1 - w) * b), (x.shape[0], 3, 3))

  law, _ = exact.sampler_distribution(
    proc, fn, 3, np.array([1.0, 0.0]), num_latent_nodes=256, latent_dim=2
  )
  states = exact.enumerate_states(3, 3)
  ad, bd = a[np.arange(3), states], b[np.arange(3), states]  # [27, D]
  a1, a2, a3, b1, b2, b3 = ad[:, 0], ad[:, 1], ad[:, 2], bd[:, 0], bd[:, 1], bd[:, 2]
  want = (a2 + b2) / 2 * (a1 * a3 / 3 + (a1 * b3 + b1 * a3) / 6 + b1 * b3 / 3)
  np.testing.assert_allclose(law, want, atol=5e-4)


def test_signature_refuses_another_latent_dim_and_keeps_old_checkpoints():
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = runs.resolve(tiny_distill.get_config())
  spec = pipeline.data_spec(c.data)
  with_k = lambda k: ml_collections.ConfigDict(
    dict(c.to_dict(), model=dict(c.model.to_dict(), latent_dim=k))
  )
  sig = lambda k: configuration.model_signature(with_k(k), spec)
  old = dict(sig(1), latent=True)  # what a student saved before latent_dim existed
  checkpoints.check_signature(old, sig(1), "old")
  checkpoints.check_signature(sig(2), sig(2), "same")
  for saved, wanted in ((sig(1), sig(2)), (sig(2), sig(1)), (old, sig(4))):
    with pytest.raises(checkpoints.IncompatibleCheckpoint, match="latent"):
      checkpoints.check_signature(saved, wanted, "w")
  configuration.validate(with_k(3), spec)
  for bad in (0, 1.5):
    with pytest.raises(ValueError, match="model.latent_dim"):
      configuration.validate(with_k(bad), spec)


def test_quick_distill_with_two_latents_gives_finite_losses():
  from mixture_dd.configs import tiny_distill

  c = tiny_distill.get_config()
  c.model.update(width=32, depth=1, heads=2, latent_dim=2)
  c.distill.update(num_latents=4)
  c.train.batch_size = 8
  res = distill.quick_distill(c, num_steps=20, chunk=20)
  assert res.setup.model.latent_dim == 2
  assert res.params["latent_embed"]["dense_in"]["kernel"].shape == (256, 32)
  assert np.all(np.isfinite(res.losses)) and len(res.losses) == 20


@pytest.mark.parametrize("preset", ["sdtt", "tauldr"])
def test_di4c_loss_draws_each_denoisers_own_latents(preset):
  """Every latent the loss draws has the shape of the denoiser it feeds: the
  student's k = 2 (at t, at u, and tauLDR's distillation times) and a
  mixture teacher's own k = 3 (its step from each latent copy of x_t)."""
  proc = processes.Masked(3, "linear")
  shapes = []

  def comp(k):
    def denoise(params, x, t, key, lam=None, labels=None):
      shapes.append((k, lam.shape))
      # depends on params and on every coordinate of lam, so both are traced
      lam_sum = jnp.sum(lam.reshape(lam.shape[0], -1), axis=1)
      return jnp.zeros(x.shape + (3,)) + params * lam_sum[:, None, None]

    denoise.latent_dim = k
    return denoise

  product = denoisers.from_function(lambda p, x, t: jnp.zeros(x.shape + (3,)))
  teacher = di4c.Teacher(product, jnp.float32(0.0), "mixture", comp(3))
  d = configuration.distill_preset(preset, num_latents=4)
  loss_fn = di4c.di4c_loss(comp(2), teacher, proc, d)
  batch = {"tokens": jnp.zeros((B, 3), jnp.int32)}
  loss, _ = jax.jit(loss_fn)(jnp.float32(0.1), batch, jax.random.key(0), teacher.frozen)
  assert np.isfinite(float(loss))
  assert {s for s in shapes} == {(2, (B * 4, 2)), (3, (B * 4, 3))}
  assert len(shapes) == (4 if preset == "tauldr" else 3)
