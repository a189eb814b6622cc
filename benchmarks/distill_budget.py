r"""Quality at N = 2 and 4 sampling steps against the distillation budget.

One distillation (constant learning rate after warm-up, so a run resumed
in segments is the same run) is stopped at every budget in --budgets; the
student there is sampled at each N in --steps and scored with the data's
primary metric (± its standard error), next to the teacher at N, 2N and 4N.
Tells a user how long to distil, and us whether a shortfall is budget or
method.

  python -m benchmarks.distill_budget --config=configs/digits_distill.py \
      --config.teacher.workdir=workdirs/demo/teacher --workdir=workdirs/budget_digits \
      --budgets=0,150,300,600,1200 --out=reports/budget_digits
Writes budget.md, budget.json and budget.png under --out.
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from launch import common
from mixture_dd import distill, evaluate, runs, scorers

_CONFIG = common.define_config_flag("Distillation config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The student's checkpoints go here.")
_BUDGETS = flags.DEFINE_list(
  "budgets",
  ["0", "150", "300", "600", "1200"],
  "Distillation steps at which the student is scored.",
)
_STEPS = flags.DEFINE_list("steps", ["2", "4"], "Sampling steps N.")
_NUM = flags.DEFINE_integer("num_samples", 2048, "Samples per (sampler, N).")
_OUT = flags.DEFINE_string("out", "reports/budget", "budget.md, budget.json, budget.png.")
flags.mark_flags_as_required(["config", "workdir"])


def _student_at_start(config) -> runs.Run:
  s = distill.setup_student(config)
  return runs.Run(s.config, s.spec, s.process, s.model, s.params, True, step=0)


def main(argv):
  common.setup(argv)
  config = _CONFIG.value
  config.optim.schedule = "constant"  # segments of one run = one run
  budgets = sorted(int(b) for b in _BUDGETS.value)
  steps = [int(s) for s in _STEPS.value]
  teacher = runs.load_run(config.teacher.workdir)
  specs = evaluate.sampler_specs(teacher)
  score, data_ref, _ = scorers.make_scorer(teacher, None, specs, None, 32, _NUM.value)
  metric = scorers.get(teacher.spec.name).primary_metric
  cache, length, process = {}, teacher.spec.length, teacher.process

  def scored(spec, n, name):
    tokens, _, _ = evaluate.draw_samples(
      spec, process, length, n, _NUM.value, min(256, _NUM.value), 0, cache
    )
    row = score(name, n, tokens)
    return [row[metric], row.get(f"{metric}_se", float("nan"))]

  ref = {n: {k: scored(specs["teacher"], k * n, "teacher") for k in (1, 2, 4)} for n in steps}
  rows, seconds = [], 0.0
  for b in budgets:
    if b == 0:
      run = _student_at_start(config)
    else:
      config.train.num_steps = b
      start = time.time()
      distill.distill_student(config, _WORKDIR.value)  # raises Preempted on SIGTERM
      seconds += time.time() - start
      run = runs.load_run(_WORKDIR.value)
    spec = evaluate.SamplerSpec(f"student_{b}", run.denoiser(), run.params)
    row = {"budget": b, "cpu_s": seconds, **{f"N{n}": scored(spec, n, "student") for n in steps}}
    rows.append(row)
    print(json.dumps(row), flush=True)
    _write(teacher, metric, steps, ref, data_ref, rows)  # after every budget: nothing is lost


def _write(teacher, metric, steps, ref, data_ref, rows):
  os.makedirs(_OUT.value, exist_ok=True)
  result = {
    "data": teacher.spec.name,
    "metric": metric,
    "num_samples": _NUM.value,
    "teacher": {str(n): {f"{k}N": v for k, v in r.items()} for n, r in ref.items()},
    "data_reference": data_ref.get(metric),
    "rows": rows,
    "device": jax.devices()[0].platform,
  }
  with open(os.path.join(_OUT.value, "budget.json"), "w") as f:
    json.dump(result, f, indent=2)
  fmt = lambda v: f"{v[0]:.4g} ± {v[1]:.2g}"
  lines = [
    f"# Distillation budget on {teacher.spec.name}: {metric} ({_NUM.value} samples)",
    "",
    "| steps | distill s | " + " | ".join(f"student N={n}" for n in steps) + " |",
    "|---|---|" + "---|" * len(steps),
  ]
  lines += [
    f"| {r['budget']} | {r['cpu_s']:.0f} | " + " | ".join(fmt(r[f"N{n}"]) for n in steps) + " |"
    for r in rows
  ]
  lines += [
    "",
    "Teacher: " + "; ".join(f"N={k * n}: {fmt(ref[n][k])}" for n in steps for k in (1, 2, 4)),
  ]
  with open(os.path.join(_OUT.value, "budget.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines), flush=True)
  _plot(result, steps, os.path.join(_OUT.value, "budget.png"))


def _plot(result, steps, path):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(steps), figsize=(4.2 * len(steps), 3.4), squeeze=False)
  budgets = [r["budget"] for r in result["rows"]]
  for ax, n in zip(axes[0], steps):
    vals = np.array([r[f"N{n}"] for r in result["rows"]])
    ax.errorbar(budgets, vals[:, 0], yerr=vals[:, 1], marker="o", label=f"student N={n}")
    for k, ls in ((1, ":"), (2, "--"), (4, "-.")):
      ax.axhline(
        result["teacher"][str(n)][f"{k}N"][0], ls=ls, color="k", lw=1, label=f"teacher N={k * n}"
      )
    ax.set_xlabel("distillation steps")
    ax.set_title(f"{result['data']}: {result['metric']} at N={n}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
