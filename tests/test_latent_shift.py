"""config.model.latent_shift: local latents' blocks rotated by a random offset per call.

What must hold: the partition is k blocks of D / k positions rotated by o (closed form); with an
offset the network's block g sees coordinate g only, on the rotated partition, and offset 0 is
the contiguous network bit for bit; the blocked likelihood on a rotated partition is the
enumerated product of its block mixtures; the mixture sampler draws offsets (so pairs across a
contiguous boundary are correlated, which a fixed partition never does) and the loss draws one
per example, shared by its L components, scoring C on the partition of its pass at t, with every
other draw unchanged; "random" adds one zero-initialised slot embedding (so exact starts stay the
teacher) and the marginals average over partitions; "none" is the old path; the field reaches
the config and (when not "none") the signature.
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
  exact,
  losses,
  networks,
  processes,
  runs,
  train_step,
)
from tests import test_local_latents as local_latents
from tests.conftest import perturbed_params, random_log_probs
from tests.test_local_latents import B, D, K, _inputs


def _model(shift="random", entry="centred"):
  return local_latents._model(entry=entry, latent_shift=shift)


def test_block_groups_are_rotated_contiguous_blocks():
  size = D // K
  np.testing.assert_array_equal(networks.block_groups(D, K), (np.arange(D) // size)[None])
  offsets = np.arange(size)
  got = np.asarray(networks.block_groups(D, K, jnp.asarray(offsets)))
  for o, row in zip(offsets, got):
    np.testing.assert_array_equal(row, ((np.arange(D) + o) % D) // size)
    assert np.bincount(row, minlength=K).tolist() == [size] * K
  np.testing.assert_array_equal(got[0], np.arange(D) // size)


def test_with_an_offset_block_g_sees_its_own_coordinate_on_the_rotated_partition():
  model = _model()
  params = perturbed_params(train_step.init_params(model, 0), 1)
  x, t = _inputs()
  offset = jnp.array([1, 0, 1], jnp.int32)
  apply = jax.jit(lambda lam, off: model.apply({"params": params}, x, t, lam=lam, block_offset=off))
  lam = jax.random.uniform(jax.random.key(2), (B, K))
  base = np.asarray(apply(lam, offset))
  groups = np.asarray(networks.block_groups(D, K, offset))
  masked = np.asarray(x == 3)
  for g in range(K):
    moved = np.asarray(apply(lam.at[:, g].set(1.0 - lam[:, g]), offset))
    inside = groups == g  # [B, D]
    np.testing.assert_array_equal(moved[~inside], base[~inside])
    assert np.abs(moved - base)[masked & inside].max() > 1e-3, g
  # Offset 0 is the contiguous network, bit for bit.
  plain = np.asarray(jax.jit(lambda lam: model.apply({"params": params}, x, t, lam=lam))(lam))
  np.testing.assert_array_equal(np.asarray(apply(lam, jnp.zeros(B, jnp.int32))), plain)


def test_block_offset_is_refused_without_local_latents():
  x, t = _inputs()
  glob = local_latents._model(scope="global", k=1)
  params = train_step.init_params(glob, 0)
  with pytest.raises(ValueError, match="block_offset rotates local latents"):
    glob.apply({"params": params}, x, t, lam=jnp.zeros(B), block_offset=jnp.zeros(B, jnp.int32))
  with pytest.raises(ValueError, match="latent_shift='random' .* latent_scope='blocks'"):
    local_latents._model(scope="global", k=1, latent_shift="random").validate_config()
  with pytest.raises(ValueError, match="latent_shift must be one of"):
    _model(shift="cyclic").validate_config()


def _rotated_block_law(lp_b, states, groups, k):
  """The product over the k blocks of `groups` [D] of each block's uniform L-mixture, float64."""
  p = np.exp(np.asarray(lp_b, np.float64))
  law = np.ones(len(states))
  for g in range(k):
    pos = np.flatnonzero(groups == g)
    law *= np.prod(p[:, pos, states[:, pos]], axis=-1).mean(0)
  return law


def test_blocked_likelihood_on_a_rotated_partition_is_the_enumerated_one():
  b, l, d, s, k = 2, 4, 4, 3, 2
  lp = random_log_probs(jax.random.key(1), b, l, d, s)
  states = exact.enumerate_states(s, d)
  x = jnp.broadcast_to(jnp.asarray(states)[None], (b,) + states.shape)
  offset = jnp.array([1, 0], jnp.int32)
  groups = networks.block_groups(d, k, offset)
  got = np.exp(np.asarray(losses.mixture_log_likelihood(lp, x, k, groups), np.float64))
  for bi in range(b):
    law = _rotated_block_law(lp[bi], states, np.asarray(groups[bi]), k)
    np.testing.assert_allclose(got[bi], law, rtol=2e-5)
    assert abs(got[bi].sum() - 1.0) < 1e-5
  # The rotated partition is a different law: {0, 3} {1, 2} is not {0, 1} {2, 3}.
  contiguous = np.exp(np.asarray(losses.mixture_log_likelihood(lp, x, k), np.float64))
  assert np.abs(got[0] - contiguous[0]).max() > 1e-3
  np.testing.assert_allclose(got[1], contiguous[1], rtol=1e-5)


def test_the_denoiser_carries_its_shifts_and_none_is_the_old_sampler():
  net = denoisers.from_network(_model())
  assert denoisers.latent_shifts(net) == D // K
  with pytest.raises(ValueError, match="exact toolkit cannot evaluate a student with rotating"):
    denoisers.exact_view(net, None)
  labelled = denoisers.with_labels(net, jnp.zeros(B, jnp.int32))
  assert denoisers.latent_shifts(labelled) == D // K
  fixed = denoisers.from_network(_model("none"))
  assert denoisers.latent_shifts(fixed) == 1
  assert denoisers.draw_block_offsets(jax.random.key(0), fixed, B) is None
  params = train_step.init_params(_model("none"), 0)
  x, t = _inputs()
  key = jax.random.key(3)
  lam = denoisers.draw_latents(key, (B,), K)  # what mixture draws: unchanged by the field
  np.testing.assert_array_equal(
    denoisers.mixture(fixed)(params, x, t, key), fixed(params, x, t, key, lam=lam)
  )


def _copy_lambda_component(length, k, shifts):
  """A component whose every position outputs 1 if its block's coordinate > 1/2, else 0
  (deterministic): two positions agree always inside a block, half the time across blocks."""

  def component(params, x_t, t, key, lam=None, labels=None, block_offset=None):
    groups = networks.block_groups(length, k, block_offset)
    bit = jnp.take_along_axis(lam, jnp.broadcast_to(groups, x_t.shape), axis=1) > 0.5
    return jnp.where(bit[..., None], jnp.array([-1e4, 0.0]), jnp.array([0.0, -1e4]))

  component.latent_dim = k
  component.latent_blocks = k
  component.latent_shifts = shifts
  return component


def test_the_mixture_sampler_rotates_blocks_so_boundary_pairs_are_correlated():
  """Positions 1 and 2 straddle a contiguous boundary (blocks of 2): with a fixed partition they
  agree half the time; rotated by a uniform offset in {0, 1} they share a block half the time, so
  they agree with probability 3/4 (n = 4000: SE 0.007)."""
  n, length, k = 4000, 8, 4
  x = jnp.zeros((n, length), jnp.int32)
  t = jnp.ones((n,))
  agree = {}
  for shifts in (1, 2):
    logits = denoisers.mixture(_copy_lambda_component(length, k, shifts))(
      None, x, t, jax.random.key(5)
    )
    tokens = np.asarray(jnp.argmax(logits, -1))
    agree[shifts] = float(np.mean(tokens[:, 1] == tokens[:, 2]))
    assert np.mean(tokens[:, 0] == tokens[:, 1]) > (0.99 if shifts == 1 else 0.7)
  assert abs(agree[1] - 0.5) < 0.04 and abs(agree[2] - 0.75) < 0.04, agree


def test_the_loss_draws_one_offset_per_example_and_scores_c_on_its_partition():
  proc = processes.Masked(3, "linear")
  num_l = 4
  cfg = configuration.distill_preset("sdtt", num_latents=num_l, data_weight=1.0, alpha_scale=1.0)
  x0 = jnp.array([[0, 1, 2, 0, 1, 2]] * B, jnp.int32)
  product = denoisers.from_function(lambda p, x, t: jnp.zeros(x.shape + (3,)))
  teacher = di4c.Teacher(product, jnp.float32(0.0), "product")

  def make(shifts):
    calls = []

    def student(params, x, t, key, lam=None, labels=None, block_offset=None):
      calls.append((t, lam, block_offset))
      return params * _features(lam, block_offset)

    student.latent_dim = K
    student.latent_blocks = K
    student.latent_shifts = shifts
    _, m = di4c.di4c_loss(student, teacher, proc, cfg)(
      jnp.float32(3.0), {"tokens": x0}, jax.random.key(0), teacher.frozen
    )
    return calls, m

  calls, m = make(D // K)
  t, lam, off = calls[0]  # the pass at t, with gradient
  assert off is not None and calls[1][2] is not None  # and the target's at u
  off = np.asarray(off).reshape(B, num_l)
  assert (off == off[:, :1]).all() and off.min() >= 0 and off.max() < D // K
  assert len(set(off[:, 0].tolist())) > 1 or len(set(np.asarray(calls[1][2]).tolist())) > 1
  groups = networks.block_groups(D, K, jnp.asarray(off[:, 0]))
  lp = jax.nn.log_softmax(3.0 * _features(lam, calls[0][2]), -1).reshape(B, num_l, D, 3)
  alpha = jax.nn.sigmoid(20.0 * (t.reshape(B, num_l)[:, 0] - 0.5))
  rotated = float(jnp.mean(losses.data_correlation_term(lp, x0, alpha, K, groups)))
  np.testing.assert_allclose(float(m["data_correlation"]), rotated, rtol=1e-5)
  # Every other draw is the fixed partition's: a student that ignores the offset gives the
  # same distillation and marginal terms as with latent_shifts 1, bit for bit.
  _, fixed = make(1)
  for name in ("distillation", "marginal", "frac_distill"):
    assert float(m[name]) == float(fixed[name]), name


def _features(lam, block_offset):
  """`[N, D, 3]`: each position's block coordinate (on the rotated partition), three ways."""
  groups = networks.block_groups(D, K, block_offset)
  per_pos = jnp.take_along_axis(lam, jnp.broadcast_to(groups, (lam.shape[0], D)), axis=1)
  return jnp.stack([per_pos, 1.0 - per_pos, 0.5 * per_pos], -1)


def test_random_adds_one_zero_slot_embedding_and_exact_starts_stay_the_teacher():
  old = train_step.init_params(_model("none"), 0)
  new = train_step.init_params(_model("random"), 0)
  latent_old, latent_new = old[networks.LATENT_MODULE], new[networks.LATENT_MODULE]
  assert set(latent_new) - set(latent_old) == {networks.SLOT_PARAM}
  assert set(new) == set(old)
  slot = np.asarray(latent_new[networks.SLOT_PARAM])
  assert slot.shape == (D // K, 32) and not slot.any()
  teacher = local_latents._model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher, 0), 2)
  x, t = _inputs()
  want = np.asarray(jax.jit(teacher.apply)({"params": t_params}, x, t))
  d = configuration.distill_preset("sdtt", student_start="exact")
  student = _model("random", entry="add")
  s_params = di4c.initial_student(student, d, 3, t_params)
  apply = jax.jit(student.apply)  # params as an argument: closed over, XLA would fold them
  for i, lam in enumerate(denoisers.draw_latents(jax.random.key(4), (2, B), K)):
    off = jnp.full((B,), i, jnp.int32)
    got = apply({"params": s_params}, x, t, lam=lam, block_offset=off)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_marginals_average_over_the_partitions():
  """mixture_marginals gives node j the offset j mod (D / k): the same as averaging, by hand,
  the marginals of each offset's half of the nodes."""
  model = _model()
  net = denoisers.from_network(model)
  params = perturbed_params(train_step.init_params(model, 0), 5)
  x, t = _inputs()
  got = np.asarray(denoisers.mixture_marginals(net, 4)(params, x, t, jax.random.key(6)))
  offs = jax.random.uniform(jax.random.key(6), (B, 1, K))
  lams = jnp.mod(offs + jnp.asarray(networks.latent_lattice(4, K), jnp.float32)[None], 1.0)
  marg = lambda offset_of: np.mean(
    [
      np.asarray(jax.nn.softmax(net(params, x, t, None, lam=lams[:, j], block_offset=offset_of(j))))
      for j in range(4)
    ],
    0,
  )
  np.testing.assert_allclose(np.exp(got), marg(lambda j: jnp.full((B,), j % 2)), atol=1e-5)
  # and the partition matters (the slot embedding is perturbed): offset 0 alone is not it.
  assert np.abs(np.exp(got) - marg(lambda j: jnp.zeros((B,), jnp.int32))).max() > 1e-3


def test_config_validates_and_signs_the_shift():
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = tiny_distill.get_config()
  c.data.length = 4
  c = runs.resolve(c)
  spec = pipeline.data_spec(c.data)
  with_ = lambda scope, shift, k=2: ml_collections.ConfigDict(
    dict(
      c.to_dict(),
      model=dict(c.model.to_dict(), latent_dim=k, latent_scope=scope, latent_shift=shift),
    )
  )
  configuration.validate(with_("blocks", "random"), spec)
  with pytest.raises(ValueError, match="model.latent_shift.*latent_scope=blocks"):
    configuration.validate(with_("global", "random"), spec)
  with pytest.raises(ValueError, match="model.latent_shift"):
    configuration.validate(with_("blocks", "sometimes"), spec)
  with pytest.raises(ValueError, match="model.latent_shift.*nothing to rotate"):
    configuration.validate(with_("blocks", "random", k=4), spec)
  model = configuration.make_model(with_("blocks", "random"), spec, processes.Masked(3), True)
  assert model.latent_shift == "random"
  teacher = configuration.make_model(with_("blocks", "random"), spec, processes.Masked(3), False)
  assert teacher.latent_shift == "none"
  sig = lambda shift: configuration.model_signature(with_("blocks", shift), spec)
  assert sig("none") == sig(None)  # unset: "none", what earlier checkpoints read as
  assert sig("random")["model.latent_shift"] == "random" and "model.latent_shift" not in sig(None)


def test_quick_distill_with_rotating_blocks_gives_finite_losses():
  from mixture_dd.configs import tiny_distill

  c = tiny_distill.get_config()
  c.data.length = 4  # two blocks of two: two partitions to draw from
  c.model.update(
    width=32, depth=1, heads=2, latent_dim=2, latent_scope="blocks", latent_shift="random"
  )
  c.distill.update(num_latents=4)
  c.train.batch_size = 8
  res = distill.quick_distill(c, num_steps=20, chunk=20)
  assert res.setup.model.latent_shift == "random"
  assert denoisers.latent_shifts(denoisers.from_network(res.setup.model)) == 2
  assert np.all(np.isfinite(res.losses)) and len(res.losses) == 20
