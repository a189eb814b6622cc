"""config.model.latent_depth: hidden layers of the latent's embedding MLP (1: the paper's).

What must hold: depth 1 is the network of earlier checkpoints (same parameter tree), a deeper
one adds `dense_hidden_i` layers and its exact starts are still the teacher, local latents
still see their own block only, and the field reaches the config, the model and the checkpoint
signature (unsigned at 1, so earlier checkpoints load; refused when it differs).
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


def _model(depth=1, latent=True, scope="global", k=1, entry="add"):
  return local_latents._model(latent, entry, scope, k, depth)


def _shapes(tree):
  return jax.tree.map(lambda a: a.shape, tree)


@pytest.mark.parametrize("scope,k", [("global", 1), ("blocks", 3)])
def test_depth_one_is_the_old_network_and_depth_three_adds_two_layers(scope, k):
  old = networks.Transformer(
    num_states=4, vocab_size=3, length=D, width=32, depth=1, heads=2, positions="learned",
    latent=True, mask_id=3, latent_dim=k, latent_scope=scope,
  )  # fmt: skip
  p_old = train_step.init_params(old, 0)
  p_one = train_step.init_params(_model(1, scope=scope, k=k), 0)
  assert _shapes(p_one) == _shapes(p_old)
  jax.tree.map(np.testing.assert_array_equal, p_one, p_old)
  p_three = train_step.init_params(_model(3, scope=scope, k=k), 0)
  latent = p_three[networks.LATENT_MODULE]
  assert {"dense_hidden_1", "dense_hidden_2"} <= set(latent)
  assert "dense_hidden_3" not in latent
  assert latent["dense_hidden_1"]["kernel"].shape == (32, 32)


@pytest.mark.parametrize("scope,k", [("global", 1), ("blocks", 3)])
def test_a_deeper_embedding_starts_exactly_at_the_teacher(scope, k):
  teacher = _model(latent=False)
  t_params = perturbed_params(train_step.init_params(teacher, 0), 2)
  x, t = _inputs()
  want = np.asarray(jax.jit(teacher.apply)({"params": t_params}, x, t))
  student = _model(3, scope=scope, k=k)
  d = configuration.distill_preset("sdtt", student_start="exact")
  s_params = di4c.initial_student(student, d, 3, t_params)
  apply = jax.jit(student.apply)
  for lam in denoisers.draw_latents(jax.random.key(4), (3, B), k):
    np.testing.assert_array_equal(np.asarray(apply({"params": s_params}, x, t, lam=lam)), want)


def test_a_deeper_block_path_keeps_each_block_to_its_own_coordinate():
  local_latents.assert_blocks_local(_model(2, scope="blocks", k=3, entry="centred"))


def test_config_validates_builds_and_signs_the_depth():
  from mixture_dd.configs import tiny_distill
  from mixture_dd.data import pipeline

  c = runs.resolve(tiny_distill.get_config())
  spec = pipeline.data_spec(c.data)
  with_ = lambda depth: ml_collections.ConfigDict(
    dict(c.to_dict(), model=dict(c.model.to_dict(), latent_depth=depth))
  )
  sig = lambda depth: configuration.model_signature(with_(depth), spec)
  assert sig(1) == sig(None)  # unset reads as 1, as before the field
  assert "model.latent_depth" not in sig(1)
  with pytest.raises(checkpoints.IncompatibleCheckpoint, match="latent_depth"):
    checkpoints.check_signature(sig(1), sig(2), "w")
  configuration.validate(with_(2), spec)
  with pytest.raises(ValueError, match="model.latent_depth"):
    configuration.validate(with_(0), spec)
  model = configuration.make_model(with_(3), spec, processes.Masked(3), True)
  assert model.latent_depth == 3
  assert configuration.make_model(with_(3), spec, processes.Masked(3), False).latent_depth == 1
