"""The default student start leaves the product: from a TRAINED product
teacher, a distilled student cuts the exact one-step TV well below the
teacher's.

The exact start (student = teacher) is a saddle of every Di4C term (see
`di4c.start_student`); whatever start is the default must reliably get
off it. Checked on a family with a large one-step product error (Dirichlet,
S = 4, D = 3); TV is exact (the sampler's law pushed through the whole state
space, lambda on Gauss-Legendre nodes). `measure(seed)` is what
`python -m benchmarks.spread --measures=student_start` runs over seeds and
CPU instruction sets; the thresholds below are set from that spread.

Measured (2026-11-29), ratio = student TV / teacher TV at one step. The recipe
(teacher and student width 32, 400 steps each at batch 128, then 64; about
50 CPU-seconds in all) replaced a five-times dearer one (width 64, 800 + 800
steps at batch 128; 170-200 s on 2 idle cores), which measured
  Intel Xeon, JAX 0.11.2, seeds 0-4: 0.501 0.502 0.506 0.450 0.484 (default ISA),
    0.471 0.500 0.531 0.503 0.621 (AVX2); AMD EPYC, JAX 0.12, seed 0: 0.424.
The recipe here, AMD EPYC, JAX 0.12, seeds 0-4:
  0.591 0.602 0.558 0.621 0.550 (default ISA), 0.595 0.604 0.560 0.611 0.550 (AVX2);
teacher TV 0.559-0.567, step-0 marginal KL 1.4e-4 to 4.0e-4 (bar 2e-3). Neither
recipe reliably halves the one-step TV (the first: median 0.50, max 0.62); what
both do reliably is cut it by more than a quarter, which is what is tested.
"""

import os

import jax
import pytest

from mixture_dd import configuration, denoisers, di4c, exact_report
from tests.conftest import measure_with_default_codegen

# The family (and its training sample) is fixed; the seed is the training seed of the
# teacher and of the student.
FAMILY = ("dirichlet", 4, 3, 1)


def measure(seed: int, family=FAMILY) -> dict:
  """One-step exact TVs of a trained teacher and of its default-start student,
  and the student's step-0 marginal KL."""
  name, s_vocab, length, data_seed = family
  probs, tokens, proc = exact_report.tiny_case(name, s_vocab, length, data_seed)
  # Width 32 and 400 steps each (batch 128, then 64): a fifth of the first recipe's cost
  # (width 64, 800 + 800 steps at batch 128), same claim; measured again below.
  t_conf = exact_report.tiny_teacher_config(s_vocab, length, width=32, steps=400, seed=seed)
  t_model, t_params = exact_report.train_tiny_teacher(t_conf, tokens)
  teacher = di4c.network_teacher(t_model, t_params)
  fn_t = denoisers.exact_view(denoisers.from_network(t_model), t_params)
  tv_teacher = exact_report.tv_table(proc, probs, length, {"t": (fn_t, False)}, [1])["t"][0]
  # The small CPU recipe with its default student_start and latent_init_scale.
  dconf = configuration.distill_preset("cpu_small")
  s_conf = exact_report.tiny_student_config(t_conf, dconf, steps=400, batch=64, lr=3e-3, seed=seed)
  model, p0, params = exact_report.distill_tiny_student(s_conf, tokens, t_model, t_params)
  kl0 = di4c.marginal_kl(teacher, model, p0, proc, tokens[:256], jax.random.key(0))
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
  m = measure_with_default_codegen("tests.test_student_start", seed)
  assert m["tv_teacher"] > 0.3, ("pick families whose one-step product error is large", m)
  # The start is close to the teacher: its marginals barely move.
  assert m["kl0"] < 2e-3, m
  # Max measured 0.62 (both recipes); the bar sits about twice this recipe's spread (0.55-0.62)
  # above it, room for another machine's rounding (the first recipe moved 0.08 between CPUs).
  assert m["ratio"] < 0.75, m
