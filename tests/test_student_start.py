"""The default student start leaves the product: from a TRAINED product
teacher, a distilled student at least halves the exact one-step TV.

The exact start (student = teacher) is a saddle of every Di4C term (see
`distill.start_student`); whatever start is the default must reliably get
off it. Checked on families with a large one-step product error, with
different vocabulary sizes, lengths and seeds; TV is exact (the sampler's
law pushed through the whole state space, lambda on Gauss-Legendre nodes).
"""

import os

import jax
import pytest

from mixture_dd import configuration, denoisers, distill, exact_report

# Each case trains a teacher and a student (about 2 minutes on 2 idle cores): one runs in CI,
# the other two (all three passed here on 2026-11-29) with MDD_FULL_TESTS=1, to keep the suite
# under 15 minutes.
_FULL_ONLY = pytest.mark.skipif(
  not os.environ.get("MDD_FULL_TESTS"), reason="slow; set MDD_FULL_TESTS=1"
)
CASES = [
  ("dirichlet", 4, 3, 1),
  pytest.param("noisy_copies", 3, 4, 2, marks=_FULL_ONLY),
  pytest.param(
    "dirichlet",
    3,
    3,
    0,
    marks=_FULL_ONLY,
  ),
]


@pytest.mark.parametrize("family,s_vocab,length,seed", CASES)
def test_default_start_halves_the_one_step_tv_of_a_trained_teacher(family, s_vocab, length, seed):
  probs, tokens, proc = exact_report.tiny_case(family, s_vocab, length, seed)
  t_model, t_params = exact_report.train_tiny_teacher(proc, tokens, seed=seed)
  teacher = distill.network_teacher(t_model, t_params)
  fn_t = denoisers.exact_view(denoisers.from_network(t_model), t_params)
  tv_teacher = exact_report.tv_table(proc, probs, length, {"t": (fn_t, False)}, [1])["t"][0]
  assert tv_teacher > 0.3, "pick families whose one-step product error is large"

  dconf = configuration.distill_preset(
    "sdtt",
    num_latents=16,
    t_sampling="uniform",
    delta="const",
    delta_lo=0.05,
    delta_hi=0.05,
    distil_threshold=0.05,
    data_weight=1.0,
    alpha_scale=1.0,
  )  # default student_start and latent_init_scale
  model, p0, params = exact_report.distill_tiny_student(
    proc, tokens, t_model, t_params, dconf, steps=800, batch=128, lr=3e-3, seed=seed
  )
  # The start is close to the teacher: its marginals barely move.
  assert distill.marginal_kl(teacher, model, p0, proc, tokens[:256], jax.random.key(0)) < 2e-3
  fn_s = denoisers.exact_view(denoisers.from_network(model), params)
  tv_student = exact_report.tv_table(proc, probs, length, {"s": (fn_s, True)}, [1])["s"][0]
  assert tv_student < 0.5 * tv_teacher, (tv_student, tv_teacher)
