"""mixture_dd: few-step discrete diffusion by Di4C distillation, in JAX/Flax.

The names a user needs; the pieces behind them live in their modules
(`mixture_dd.di4c`, `.distill`, `.samplers`, `.denoisers`, `.data.pipeline`, ...).
"""

# Config constructors: a teacher's defaults; a data set's section; a distillation's defaults; the
# Di4C knobs of a reference setup (tauldr, maskgit, sdtt).
from mixture_dd.configuration import base_config, data_config, distill_base_config, distill_preset

# A denoiser from a plain fn(params, x_t [B, D], t [B]) -> logits [B, D, S].
from mixture_dd.denoisers import from_function

# A frozen teacher (any denoiser and its parameters).
from mixture_dd.di4c import Teacher

# A distillation's pieces; a checkpointed, resumable distillation (of a workdir of ours, the
# ideal teacher, or a Teacher and a token array passed in); the same without checkpoints, for
# small experiments.
from mixture_dd.distill import distill_student, quick_distill, setup_student

# Evaluation of a teacher run against a student run (not named `evaluate`: that name is the
# module mixture_dd.evaluate, which launchers and tests import).
from mixture_dd.evaluate import evaluate as evaluate_runs

# A finished run loaded from its workdir; the teacher a student run was distilled from; samples
# of a run in one call.
from mixture_dd.runs import load_run, sample, teacher_run

# Trains (or resumes) a product teacher; checkpoints in a workdir.
from mixture_dd.teacher_training import train_teacher

__all__ = [
  "Teacher",
  "base_config",
  "data_config",
  "distill_base_config",
  "distill_preset",
  "distill_student",
  "evaluate_runs",
  "from_function",
  "load_run",
  "quick_distill",
  "sample",
  "setup_student",
  "teacher_run",
  "train_teacher",
]
