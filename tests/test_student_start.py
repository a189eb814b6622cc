"""The default student start leaves the product: from a TRAINED product
teacher, a distilled student cuts the exact one-step TV well below the
teacher's.

The exact start (student = teacher) is a saddle of every Di4C term (see
`distill.start_student`); whatever start is the default must reliably get
off it. Checked on a family with a large one-step product error (Dirichlet,
S = 4, D = 3); TV is exact (the sampler's law pushed through the whole state
space, lambda on Gauss-Legendre nodes). `measure(seed)` is what
`python -m benchmarks.spread --measures=student_start` runs over seeds and
CPU instruction sets; the thresholds below are set from that spread.

Measured (2026-11-29), ratio = student TV / teacher TV at one step:
  Intel Xeon, JAX 0.11.2, seeds 0-4: 0.501 0.502 0.506 0.450 0.484 (default ISA),
    0.471 0.500 0.531 0.503 0.621 (--xla_cpu_max_isa=AVX2);
  AMD EPYC, JAX 0.12, seed 0: 0.424; the machine of issue 17, seed 1: 0.526.
So the default start does NOT reliably halve the one-step TV (median 0.50, max
0.62): what it does reliably is cut it by more than a quarter. Teacher TV
0.557-0.563 everywhere; step-0 marginal KL 3.3e-4 to 8.9e-4 (bar 2e-3).
"""

import os

import jax
import pytest

from mixture_dd import configuration, denoisers, distill, exact_report

# The family (and its training sample) is fixed; the seed is the training seed of the
# teacher and of the student.
FAMILY = ("dirichlet", 4, 3, 1)


def measure(seed: int, family=FAMILY) -> dict:
  """One-step exact TVs of a trained teacher and of its default-start student,
  and the student's step-0 marginal KL."""
  name, s_vocab, length, data_seed = family
  probs, tokens, proc = exact_report.tiny_case(name, s_vocab, length, data_seed)
  t_conf = exact_report.tiny_teacher_config(s_vocab, length, seed=seed)
  t_model, t_params = exact_report.train_tiny_teacher(t_conf, tokens)
  teacher = distill.network_teacher(t_model, t_params)
  fn_t = denoisers.exact_view(denoisers.from_network(t_model), t_params)
  tv_teacher = exact_report.tv_table(proc, probs, length, {"t": (fn_t, False)}, [1])["t"][0]
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
  s_conf = exact_report.tiny_student_config(t_conf, dconf, steps=800, batch=128, lr=3e-3, seed=seed)
  model, p0, params = exact_report.distill_tiny_student(s_conf, tokens, t_model, t_params)
  kl0 = distill.marginal_kl(teacher, model, p0, proc, tokens[:256], jax.random.key(0))
  fn_s = denoisers.exact_view(denoisers.from_network(model), params)
  tv_student = exact_report.tv_table(proc, probs, length, {"s": (fn_s, True)}, [1])["s"][0]
  return {
    "tv_teacher": float(tv_teacher),
    "tv_student": float(tv_student),
    "ratio": float(tv_student / tv_teacher),
    "kl0": float(kl0),
  }


_FULL_ONLY = pytest.mark.skipif(
  not os.environ.get("MDD_FULL_TESTS"), reason="slow; set MDD_FULL_TESTS=1"
)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=_FULL_ONLY)])
def test_default_start_cuts_the_one_step_tv_of_a_trained_teacher_by_a_quarter(seed):
  m = measure(seed)
  assert m["tv_teacher"] > 0.3, ("pick families whose one-step product error is large", m)
  # The start is close to the teacher: its marginals barely move.
  assert m["kl0"] < 2e-3, m
  # Max measured 0.62 (AVX2, seed 4); the bar sits one full spread (0.45-0.62) above it.
  assert m["ratio"] < 0.75, m
