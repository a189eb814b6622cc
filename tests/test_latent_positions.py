"""config.model.latent_positions: a student-only position embedding ("none": the paper's network).

What must hold: without it a rope student gives every position of an all-masked input the same
logits for every lambda (so its mixture can only express exchangeable correlation: the reason
for the field); with it positions can differ. "none" is the network of earlier checkpoints bit
for bit; "learned" adds one zero-initialised `[length, width]` parameter, so an exact start is
still the teacher and `student_params_from_teacher` / `latent_lr_mult` treat it as the latent
path's; local latents still see their own block only; the field reaches the config, the model
and the checkpoint signature (unsigned at "none", refused when it differs).
"""

import jax
import ml_collections
import numpy as np
import pytest

from mixture_dd import (
  checkpoints,
  configuration,
  denoisers,
  di4c,
  networks,
  processes,
  runs,
  train_step,
)
from tests import test_local_latents as local_latents
from tests.conftest import perturbed_params
from tests.test_local_latents import B, D, _inputs

MASK = 3


def _model(latent_positions="none", latent=True, scope="global", k=1, positions="rope"):
  return local_latents._model(
    latent, "centred", scope, k, positions=positions, latent_positions=latent_positions
  )


def _all_masked_log_probs(model, seed):
  params = perturbed_params(train_step.init_params(model, 0), seed)
  x = np.full((B, D), MASK, np.int32)
  t = np.ones((B,), np.float32)
  lam = denoisers.draw_latents(jax.random.key(seed), (B,), model.latent_dim)
  return np.asarray(jax.nn.log_softmax(model.apply({"params": params}, x, t, lam=lam), -1))


@pytest.mark.parametrize("scope,k", [("global", 1), ("blocks", 3)])
def test_a_rope_student_is_blind_to_position_at_t_one_unless_it_learns_positions(scope, k):
  # Split into the latent's blocks (one for global): each block has its own lambda coordinate.
  blocks = lambda lp: lp.reshape(B, k, D // k, -1)
  blind = blocks(_all_masked_log_probs(_model("none", scope=scope, k=k), 1))
  # Every position of a block the same law, for every lambda: exchangeable components.
  np.testing.assert_allclose(blind, np.broadcast_to(blind[:, :, :1], blind.shape), atol=1e-5)
  seeing = blocks(_all_masked_log_probs(_model("learned", scope=scope, k=k), 1))
  assert np.abs(seeing - seeing[:, :, :1]).max() > 1e-2


@pytest.mark.parametrize("scope,k", [("global", 1), ("blocks", 3)])
def test_none_is_the_old_network_and_learned_adds_one_zero_embedding(scope, k):
  p_old = train_step.init_params(local_latents._model(True, "centred", scope, k), 0)
  p_none = train_step.init_params(_model("none", scope=scope, k=k, positions="learned"), 0)
  jax.tree.map(np.testing.assert_array_equal, p_none, p_old)
  p_new = train_step.init_params(_model("learned", scope=scope, k=k, positions="learned"), 0)
  assert set(p_new) - set(p_old) == {networks.LATENT_POSITIONS_PARAM}
  pos = np.asarray(p_new[networks.LATENT_POSITIONS_PARAM])
  assert pos.shape == (D, 32) and not pos.any()
  assert networks.is_latent_param((networks.LATENT_POSITIONS_PARAM,))
  assert not networks.is_latent_param(("pos_embed",))


@pytest.mark.parametrize("scope,k", [("global", 1), ("blocks", 3)])
def test_a_student_with_learned_positions_starts_exactly_at_the_teacher(scope, k):
  teacher = _model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher, 0), 2)
  x, t = _inputs()
  want = np.asarray(jax.jit(teacher.apply)({"params": t_params}, x, t))
  student = _model("learned", scope=scope, k=k)
  d = configuration.distill_preset("sdtt", student_start="exact")
  s_params = di4c.initial_student(student, d, 3, t_params)
  assert networks.LATENT_POSITIONS_PARAM in s_params
  apply = jax.jit(student.apply)
  for lam in denoisers.draw_latents(jax.random.key(4), (3, B), k):
    np.testing.assert_array_equal(np.asarray(apply({"params": s_params}, x, t, lam=lam)), want)


def test_learned_positions_keep_each_block_to_its_own_coordinate():
  local_latents.assert_blocks_local(_model("learned", scope="blocks", k=3))


def test_latent_lr_mult_scales_the_position_embedding_with_the_latent_path():
  from mixture_dd.configs import tiny_distill

  optim = tiny_distill.get_config().optim
  optim.update(lr=1e-2, warmup_steps=0, weight_decay=0.0, latent_lr_mult=0.0)
  params = train_step.init_params(_model("learned"), 0)
  grads = jax.tree.map(np.ones_like, params)
  opt = train_step.make_optimizer(optim, 10)
  _, state = opt.update(grads, opt.init(params), params)  # step 0 of the warm-up: lr 0
  updates, _ = opt.update(grads, state, params)
  flat = {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(updates)}
  for path, u in flat.items():
    latent = networks.is_latent_param(tuple(getattr(p, "key", p) for p in path))
    assert (not u.any()) == latent, path


def test_config_validates_builds_and_signs_the_positions():
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = runs.resolve(tiny_distill.get_config())
  spec = pipeline.data_spec(c.data)
  with_ = lambda v: ml_collections.ConfigDict(
    dict(c.to_dict(), model=dict(c.model.to_dict(), latent_positions=v))
  )
  sig = lambda v: configuration.model_signature(with_(v), spec)
  assert sig("none") == sig(None)  # unset reads as "none", as before the field
  assert "model.latent_positions" not in sig("none")
  with pytest.raises(checkpoints.IncompatibleCheckpoint, match="latent_positions"):
    checkpoints.check_signature(sig("none"), sig("learned"), "w")
  configuration.validate(with_("learned"), spec)
  with pytest.raises(ValueError, match="model.latent_positions"):
    configuration.validate(with_("rope"), spec)
  model = configuration.make_model(with_("learned"), spec, processes.Masked(3), True)
  assert model.latent_positions == "learned"
  teacher = configuration.make_model(with_("learned"), spec, processes.Masked(3), False)
  assert teacher.latent_positions == "none"
