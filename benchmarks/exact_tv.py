r"""Exact TV, teacher against Di4C student, on tiny families (S = D = 3).

The teacher is the EXACT ideal product denoiser; the student is distilled
with configs/tiny_distill.py (quick_distill, no checkpoints). TV is exact:
the whole law is pushed through every step, lambda integrated on 32
Gauss-Legendre nodes.
  python -m benchmarks.exact_tv --out=reports/exact_tv_student.md
"""

import datetime
import os
import platform
import time

from absl import app, flags

from mixture_dd import distill, exact, exact_report
from mixture_dd.configs import tiny_distill

_OUT = flags.DEFINE_string("out", "reports/exact_tv_student.md", "Markdown table goes here.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8", "16"], "Sampling steps N.")
_TRAIN = flags.DEFINE_integer("train_steps", 1200, "Distillation steps per family.")
FAMILIES = (("dirichlet", 0), ("markov", 1))


def main(argv):
  del argv
  steps = [int(s) for s in _STEPS.value]
  lines = [
    f"Exact TV to the data law, S = D = 3, masked linear schedule "
    f"({datetime.date.today()}, {platform.machine()} CPU x{os.cpu_count()}, "
    f"{_TRAIN.value} distillation steps, L = 32).",
    "",
    "| family | sampler | " + " | ".join(f"N={n}" for n in steps) + " | train s |",
    "|---|---|" + "---|" * len(steps) + "---|",
  ]
  for family, seed in FAMILIES:
    c = tiny_distill.get_config()
    c.data.update(family=family, seed=seed)
    t0 = time.time()
    result = distill.quick_distill(c, _TRAIN.value)
    secs = time.time() - t0
    tv = exact_report.distilled_tv_table(result, exact.make_family(family, 3, 3, seed), steps)
    for key, name in (("teacher", "teacher (exact product)"), ("student", "Di4C student")):
      extra = f"{secs:.0f}" if key == "student" else ""
      lines.append(
        f"| {family} | {name} | " + " | ".join(f"{v:.4f}" for v in tv[key]) + f" | {extra} |"
      )
  text = "\n".join(lines)
  print(text)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
