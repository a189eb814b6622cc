"""benchmarks.first_step: the student network fitted to t = 1 alone, scored by one-step samples.

What must hold: the fit lowers the one-step pair_tv from its start (the loss it descends is the
one-step law's likelihood), variants are the config with the named fields set, and data or
specs it cannot use are refused by name.
"""

import numpy as np
import pytest

from benchmarks import first_step
from mixture_dd import runs
from mixture_dd.configs import markov_exact_local_distill


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _small(config, data_dir):
  config.data.update(data_dir=data_dir, num_train=256, num_test=64)
  config.model.update(width=32, depth=1, heads=2)
  config.distill.num_latents = 4
  return config


def test_fitting_t_one_lowers_the_one_step_pair_tv(data_dir):
  config = _small(runs.resolve(markov_exact_local_distill.get_config()), data_dir)
  rows = first_step.fit(config, 0, steps=30, batch=16, lr=1e-2, eval_every=30, num_samples=256)
  assert [r["step"] for r in rows] == [0, 30]
  for r in rows:
    assert np.isfinite([r["pair_tv"], r["pair_tv_se"], r["tc"], r["tc_se"]]).all()
  # Seeds 0-3: a fresh network's one-step pair_tv 0.55-0.79, after 30 steps of the t = 1
  # likelihood at lr 1e-2 0.31-0.34 (its marginals learnt); every drop was >= 0.22.
  assert rows[1]["pair_tv"] < rows[0]["pair_tv"] - 0.1, rows


def test_a_coupled_student_is_fitted_on_its_latent_pairs(data_dir):
  # Refused until its likelihood (the L x L pairs on one x_1, the cycle's segments) was here.
  from mixture_dd.configs import markov_exact_coupled_distill

  config = _small(runs.resolve(markov_exact_coupled_distill.get_config()), data_dir)
  assert config.model.latent_coupling == "halves"
  rows = first_step.fit(config, 0, steps=30, batch=16, lr=1e-2, eval_every=30, num_samples=256)
  for r in rows:
    assert np.isfinite([r["pair_tv"], r["pair_tv_se"], r["tc"], r["tc_se"]]).all()
  # Seeds 0-3: one-step pair_tv 0.55-0.79 at the start, 0.319-0.326 after 30 steps (every
  # drop >= 0.23), and the mixture's total correlation at t = 1 from 0.00 (the components
  # start equal) to 2.39-3.20 nats: the pairs' likelihood trains both paths.
  assert rows[1]["pair_tv"] < rows[0]["pair_tv"] - 0.1, rows
  assert rows[0]["tc"] < 0.1 and rows[1]["tc"] > 1.0, rows


def test_variants_set_the_named_fields_and_refuse_bad_specs():
  out = first_step.variants(
    "markov_exact_local_distill",
    ["none:model.latent_positions=none", "none:distill.num_latents=8", "k4:model.latent_dim=4"],
  )
  assert list(out) == ["config", "none", "k4"]
  assert out["config"].model.latent_positions == "learned"
  assert out["none"].model.latent_positions == "none" and out["none"].distill.num_latents == 8
  assert out["k4"].model.latent_dim == 4 and out["k4"].model.latent_positions == "learned"
  for bad in ["nofield", "tag:field", "config:model.latent_dim=2"]:
    with pytest.raises(ValueError, match="TAG:FIELD=VALUE"):
      first_step.variants("markov_exact_local_distill", [bad])


def test_non_markov_data_is_refused_by_name():
  from mixture_dd.configs import tiny_distill

  with pytest.raises(ValueError, match="Markov"):
    first_step.fit(runs.resolve(tiny_distill.get_config()), 0, 1, 2, 1e-3, 1, 8)
