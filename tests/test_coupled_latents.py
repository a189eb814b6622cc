"""Coupled local latents (model.latent_coupling "halves"): a second partition, half a block off.

What must hold: each position's logits depend on its A-block's and its B-block's coordinates
and on no other (`networks.coupled_groups` names both, for every offset); at init the coupled
student is the local student it extends; the loss's L x L latent pairs from the shared trunk
are the components of single calls at (lambda_A of i, lambda_B of j); the cycle likelihood
equals the brute-force average over every assignment of the 2 k latents to their L draws
(and reduces to the block estimator when the B path is constant); the marginals average
every (A, B) pair of a partition's nodes, and the sampled total correlation is the cycle
law's; the Di4C loss trains the B path; configs name a wrong coupling.
"""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mixture_dd import (
  configuration,
  denoisers,
  di4c,
  exact,
  losses,
  networks,
  processes,
  train_step,
)
from tests.conftest import perturbed_params, random_log_probs

B, D, K, S = 3, 8, 2, 3  # 2 blocks of 4 positions: 4 segments of 2
N = 3  # latents per example


def _model(coupling="halves", shift="random", latent=True):
  return networks.Transformer(
    num_states=S + 1,
    vocab_size=S,
    length=D,
    width=32,
    depth=1,
    heads=2,
    latent=latent,
    mask_id=S,
    latent_dim=K if latent else 1,
    latent_scope="blocks" if latent else "global",
    latent_positions="learned" if latent else "none",
    latent_shift=shift if latent else "none",
    latent_coupling=coupling if latent else "none",
  )


def _inputs():
  x = jnp.array([[S] * D, [0, S, 1, S, S, 2, S, 1], [S, 2, S, 1, 0, S, S, S]], jnp.int32)
  return x, jnp.array([0.9, 0.5, 0.2])


@pytest.mark.parametrize("offset", [None, 0, 1, 3])
def test_each_position_depends_on_its_a_and_b_coordinates_only(offset):
  model = _model(shift="none" if offset is None else "random")
  params = perturbed_params(train_step.init_params(model, 0), 1)
  x, t = _inputs()
  kw = {} if offset is None else {"block_offset": jnp.full((B,), offset, jnp.int32)}
  apply = jax.jit(lambda lam: model.apply({"params": params}, x, t, lam=lam, **kw))
  lam = jax.random.uniform(jax.random.key(2), (B, 2 * K))
  base = np.asarray(apply(lam))
  a_groups = np.asarray(networks.block_groups(D, K, kw.get("block_offset")))[0]
  b_groups = np.asarray(networks.coupled_groups(D, K, kw.get("block_offset"))[0])[0]
  masked = np.asarray(x == S)
  for c in range(2 * K):
    moved = np.asarray(apply(lam.at[:, c].set(1.0 - lam[:, c])))
    inside = (a_groups == c) if c < K else (b_groups == c - K)
    np.testing.assert_array_equal(moved[:, ~inside], base[:, ~inside])
    assert np.abs(moved - base)[masked & inside[None]].max() > 1e-3, c
  # half a block off: every pair of neighbours shares an A- or a B-block
  same = (a_groups[:-1] == a_groups[1:]) | (b_groups[:-1] == b_groups[1:])
  assert same.all() and not (a_groups[:-1] == a_groups[1:]).all()


def test_at_init_the_coupled_student_is_the_local_student():
  coupled, local = _model(), _model(coupling="none")
  params = train_step.init_params(coupled, 0)
  assert networks.COUPLED_MODULE in params
  local_params = {k: v for k, v in params.items() if k != networks.COUPLED_MODULE}
  assert jax.tree.structure(local_params) == jax.tree.structure(train_step.init_params(local, 0))
  x, t = _inputs()
  lam = jax.random.uniform(jax.random.key(1), (B, 2 * K))
  off = jnp.array([0, 2, 3], jnp.int32)
  got = coupled.apply({"params": params}, x, t, lam=lam, block_offset=off)
  want = local.apply({"params": local_params}, x, t, lam=lam[:, :K], block_offset=off)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # the B path is student-only: a teacher's weights copy into everything else
  assert networks.is_latent_param((networks.COUPLED_MODULE, "logits", "kernel"))


@pytest.mark.parametrize("chunks", [1, 3])
def test_the_losss_latent_pairs_are_single_calls(chunks):
  model = _model()
  params = perturbed_params(train_step.init_params(model, 0), 3)
  comp = denoisers.from_network(model)
  assert denoisers.latent_coupled(comp) and denoisers.latent_dim(comp) == 2 * K
  assert denoisers.latent_blocks(comp) == K
  x, t = _inputs()
  lam = denoisers.draw_latents(jax.random.key(4), (B, N), 2 * K, stratified=True)
  off = jnp.array([1, 0, 3], jnp.int32)
  lp = di4c.component_log_probs(comp, params, x, t, lam, None, jax.random.key(5), chunks,
                                block_offset=off)  # fmt: skip
  assert lp.shape == (B, N * N, D, S)
  for i, j in itertools.product(range(N), range(N)):
    mixed = jnp.concatenate([lam[:, i, :K], lam[:, j, K:]], -1)
    want = jax.nn.log_softmax(model.apply({"params": params}, x, t, lam=mixed, block_offset=off))
    np.testing.assert_allclose(np.asarray(lp[:, i * N + j]), np.asarray(want), atol=2e-3, rtol=0)
  assert np.abs(np.asarray(lp[:, 0] - lp[:, 1]))[np.asarray(x == S)].max() > 0.1  # B matters
  with pytest.raises(ValueError, match="no L-copy path"):
    denoisers.without_components(comp)


def _brute_force_log_likelihood(lp, x, segments, b_groups, num_l):
  """log of L^(-2k) sum over every assignment of the 2 k latents of prod_d p(x^d | ...)."""
  out = np.zeros(lp.shape[0])
  for b in range(lp.shape[0]):
    terms = []
    for assign in itertools.product(range(num_l), repeat=2 * K):
      total = 0.0
      for d in range(D):
        i, j = assign[segments[b, d] // 2], assign[K + b_groups[b, d]]
        total += lp[b, i * num_l + j, d, x[b, d]]
      terms.append(total)
    out[b] = np.logaddexp.reduce(terms) - 2 * K * np.log(num_l)
  return out


@pytest.mark.parametrize("num_l", [2, 3])
def test_the_cycle_likelihood_is_the_average_over_every_latent_assignment(num_l):
  rng = np.random.default_rng(num_l)
  lp = jax.nn.log_softmax(jnp.asarray(2.0 * rng.normal(size=(B, num_l * num_l, D, S))), -1)
  x = jnp.asarray(rng.integers(0, S, size=(B, 2, D)), jnp.int32)  # M = 2 targets
  off = jnp.array([0, 1, 3], jnp.int32)
  b_groups, segments = (np.asarray(a) for a in networks.coupled_groups(D, K, off))
  got = losses.mixture_log_likelihood(lp, x, K, jnp.asarray(segments), coupled=True)
  assert got.shape == (B, 2)
  lp64 = np.asarray(lp, np.float64)
  for m in range(2):
    want = _brute_force_log_likelihood(lp64, np.asarray(x[:, m]), segments, b_groups, num_l)
    np.testing.assert_allclose(np.asarray(got[:, m]), want, rtol=1e-5)
  # a B path that does not depend on lambda_B: the product of A-block mixtures
  flat = jnp.repeat(lp.reshape(B, num_l, num_l, D, S)[:, :, :1], num_l, 2).reshape(lp.shape)
  a_only = flat.reshape(B, num_l, num_l, D, S)[:, :, 0]
  got = losses.mixture_log_likelihood(flat, x, K, jnp.asarray(segments), coupled=True)
  want = losses.mixture_log_likelihood(a_only, x, K, networks.block_groups(D, K, off))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_the_di4c_loss_trains_the_b_path():
  model = _model()
  teacher_model = _model(latent=False)
  teacher = di4c.network_teacher(
    teacher_model, perturbed_params(train_step.init_params(teacher_model, 0), 5)
  )
  comp = denoisers.from_network(model, train=True)
  params = perturbed_params(train_step.init_params(model, 0), 6)
  cfg = configuration.distill_preset("cpu_small", num_latents=4, latent_sampling="stratified")
  loss_fn = di4c.di4c_loss(comp, teacher, processes.Masked(S, "linear"), cfg)
  x0 = jnp.asarray(np.random.default_rng(0).integers(0, S, size=(4, D)), jnp.int32)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
    params, {"tokens": x0}, jax.random.key(7), teacher.frozen
  )
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["consistency"]))
  g = np.abs(np.asarray(grads[networks.COUPLED_MODULE]["embed_in"]["kernel"])).max()
  assert g > 0
  # sampling and the marginals take the 2 k coordinates too
  x, t = _inputs()
  ev = denoisers.from_network(model)
  for fn in (denoisers.mixture(ev), denoisers.mixture_marginals(ev, 4)):
    out = fn(params, x, t, jax.random.key(3))
    assert out.shape == (B, D, S) and np.isfinite(np.asarray(out)).all()


def test_the_marginals_average_every_pair_of_a_partitions_nodes():
  """Node j's partition is j mod s; within a partition every (A of node i, B of node j)
  pair is a component, each partition weighted by its share of the nodes: single calls."""
  model = _model()
  params = perturbed_params(train_step.init_params(model, 0), 3)
  ev = denoisers.from_network(model)
  x, t = _inputs()
  num_l, key = 6, jax.random.key(3)
  got = np.exp(np.asarray(denoisers.mixture_marginals(ev, num_l)(params, x, t, key)))
  shifts = denoisers.latent_shifts(ev)
  assert shifts == D // K and num_l % shifts  # unequal partitions: 2, 2, 1, 1 nodes
  offs = jax.random.uniform(key, (B, 1, 2 * K))
  lams = jnp.mod(offs + jnp.asarray(networks.latent_lattice(num_l, 2 * K))[None], 1.0)
  want = np.zeros((B, D, S))
  for o in range(shifts):
    nodes = range(o, num_l, shifts)
    for i, j in itertools.product(nodes, nodes):
      lam = jnp.concatenate([lams[:, i, :K], lams[:, j, K:]], -1)
      off = jnp.full((B,), o, jnp.int32)
      p = jax.nn.softmax(model.apply({"params": params}, x, t, lam=lam, block_offset=off), -1)
      want += np.asarray(p) / (len(nodes) * num_l)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_the_coupled_total_correlation_is_the_enumerated_one():
  """The sampled TC of the L x L pairs (each of the 2 k latents its own index) against the
  cycle law's, enumerated over all S^D states and L^(2 k) assignments, within 5 standard
  errors of the estimator; the uncoupled estimate of the same rows does not see it."""
  b, num_l, d, s, k, draws = 2, 2, 4, 3, 2, 20000
  lp = random_log_probs(jax.random.key(4), b, num_l * num_l, d, s)
  got = np.asarray(di4c.mixture_total_correlation(jax.random.key(5), lp, draws, k, True))
  rows = np.asarray(di4c.mixture_total_correlation(jax.random.key(5), lp, draws))
  p = np.exp(np.asarray(lp, np.float64))
  states = exact.enumerate_states(s, d)
  a_groups = np.asarray(networks.block_groups(d, k))[0]
  b_groups = np.asarray(networks.coupled_groups(d, k)[0])[0]
  for bi in range(b):
    law = np.zeros(len(states))
    for assign in itertools.product(range(num_l), repeat=2 * k):
      row = [assign[a_groups[q]] * num_l + assign[k + b_groups[q]] for q in range(d)]
      law += np.prod([p[bi, row[q], q, states[:, q]] for q in range(d)], axis=0)
    law /= num_l ** (2 * k)
    np.testing.assert_allclose(law.sum(), 1.0, rtol=1e-6)
    c = np.log(law) - np.sum(np.log(p[bi].mean(0)[np.arange(d), states]), axis=-1)
    tc = np.sum(law * c)
    se = np.sqrt((np.sum(law * c**2) - tc**2) / draws)
    assert tc > 0.05 and abs(got[bi] - tc) < 5 * se, (bi, got[bi], tc, se)
    assert abs(rows[bi] - tc) > 10 * se, (bi, rows[bi], tc)
  with pytest.raises(ValueError, match="L x L rows"):
    di4c.mixture_total_correlation(jax.random.key(5), lp[:, :3], 10, k, True)


def test_configs_name_a_wrong_coupling():
  with pytest.raises(ValueError, match="latent_coupling"):
    _model(coupling="pairs").validate_config()
  with pytest.raises(ValueError, match="even"):
    networks.Transformer(
      num_states=4, vocab_size=3, length=6, latent=True, latent_dim=2, latent_scope="blocks",
      latent_coupling="halves",
    ).validate_config()  # fmt: skip
  with pytest.raises(ValueError, match="latent_scope='blocks'"):
    networks.Transformer(
      num_states=4, vocab_size=3, length=8, latent=True, latent_coupling="halves"
    ).validate_config()
  with pytest.raises(ValueError, match="coupled_parts"):
    x, t = _inputs()
    local = _model(coupling="none")
    local.apply(
      {"params": train_step.init_params(local, 0)}, x, t, lam=jnp.zeros((B, K)),
      coupled_parts=True,
    )  # fmt: skip


def test_config_validates_builds_and_signs_the_coupling():
  from mixture_dd import runs
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = tiny_distill.get_config()
  c.data.length = 4
  c = runs.resolve(c)
  spec = pipeline.data_spec(c.data)
  with_ = lambda coupling, k=2, scope="blocks": ml_collections.ConfigDict(
    dict(
      c.to_dict(),
      model=dict(c.model.to_dict(), latent_dim=k, latent_scope=scope, latent_coupling=coupling),
    )
  )
  configuration.validate(with_("halves"), spec)  # two blocks of two: halves of one
  with pytest.raises(ValueError, match="model.latent_coupling.*latent_scope=blocks"):
    configuration.validate(with_("halves", scope="global"), spec)
  with pytest.raises(ValueError, match="model.latent_coupling.*even size"):
    configuration.validate(with_("halves", k=4), spec)  # blocks of one position
  with pytest.raises(ValueError, match="model.latent_coupling.*choose one of"):
    configuration.validate(with_("pairs"), spec)
  model = configuration.make_model(with_("halves"), spec, processes.Masked(3), True)
  assert model.coupled and model.lam_dim == 4
  teacher = configuration.make_model(with_("halves"), spec, processes.Masked(3), False)
  assert not teacher.coupled and teacher.latent_coupling == "none"
  sig = lambda coupling: configuration.model_signature(with_(coupling), spec)
  assert sig("none") == sig(None)  # unset: "none", what earlier checkpoints read as
  assert sig("halves")["model.latent_coupling"] == "halves"
  assert "model.latent_coupling" not in sig("none")
