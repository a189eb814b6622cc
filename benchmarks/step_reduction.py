r"""Teacher -> Di4C student -> evaluation, for several data sets at once: the step-reduction tables.

Each pipeline trains (or resumes, or finds finished) its teacher, distils its
student from the installed configs (`mixture_dd.configs`), and evaluates the
teacher at N, 2N, 4N against the student at N on the data set's two-sided
primary metric with standard errors (`reports.step_reduction_table`). The
pipelines run as separate processes, `--jobs` at a time (on one GPU they share
it: each process takes memory as it needs it). Every pipeline writes its
report to OUT_DIR/NAME/ and the tables are gathered in OUT_DIR/summary.md.

  python -m benchmarks.step_reduction --out_dir=reports/steps --workdir=workdirs/steps \
      [--pipelines=markov_exact,markov,pydoc,digits_gaussian] [--jobs=4] \
      [--teacher_steps_mult=1] [--student_steps_mult=1] [--num_samples=2048]

The run on the lent accelerator (one H200, 9 pipelines at once) that docs/results/markov.md's
sequence tables come from:
  python -m benchmarks.step_reduction --flagfile=benchmarks/step_reduction_accelerator.flags

--*_steps_mult scale the configs' training budgets (e.g. 4 on an accelerator);
a pipeline of a config whose teacher is exact (markov_exact) trains no teacher.
A lever is a variant NAME+TAG of a pipeline with its own --override fields, e.g.
  --pipelines=markov_exact,markov_exact+L32 \
  --override=markov_exact+L32:student:distill.num_latents=32
(a variant with only student overrides reuses the base pipeline's teacher, trained by the
base if it is listed, else by the first such variant: `schedule`). A di4c^2 round
distils a finished student run instead, and is evaluated against it:
  --pipelines=markov_exact_local+r2 \
  --override=markov_exact_local+r2:student:teacher.kind=network \
  --override=markov_exact_local+r2:student:teacher.workdir=WORKDIR/markov_exact_local/student
"""

import ast
import os
import subprocess
import sys
import time

from absl import app, flags

# name -> (teacher config or None for an exact teacher, distillation config, evaluation kwargs).
PIPELINES = {
  "markov_exact": (None, "markov_exact_distill", {}),
  "markov_exact_local": (None, "markov_exact_local_distill", {}),
  "markov_exact_coupled": (None, "markov_exact_coupled_distill", {}),
  "markov": ("markov", "markov_distill", {}),
  "markov_local": ("markov", "markov_local_distill", {}),
  "markov_coupled": ("markov", "markov_coupled_distill", {}),
  "pydoc": ("pydoc_text", "pydoc_text_distill", {"teacher_temperatures": [0.8, 0.9, 1.0, 1.1]}),
  "pydoc_local": (
    "pydoc_text",
    "pydoc_text_local_distill",
    {"teacher_temperatures": [0.8, 0.9, 1.0, 1.1]},
  ),
  "digits_gaussian": ("digits_gaussian", "digits_gaussian_distill", {}),
  "digits": ("digits", "digits_distill", {}),
}

_OUT = flags.DEFINE_string("out_dir", "reports/steps", "Reports: OUT_DIR/NAME/, summary.md.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/steps", "Runs: WORKDIR/NAME/{teacher,student}.")
_WHICH = flags.DEFINE_list("pipelines", list(PIPELINES), f"Among {list(PIPELINES)}.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Pipelines at once.")
_TMULT = flags.DEFINE_float("teacher_steps_mult", 1.0, "Multiplies the teachers' num_steps.")
_SMULT = flags.DEFINE_float("student_steps_mult", 1.0, "Multiplies the students' num_steps.")
_NUM = flags.DEFINE_integer("num_samples", 2048, "Samples per sampler and N.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8", "16", "32"], "Teacher's N.")
_STUDENT_STEPS = flags.DEFINE_list("student_steps", ["1", "2", "4", "8"], "Student's N.")
_OVERRIDES = flags.DEFINE_multi_string(
  "override",
  [],
  "NAME:teacher|student:field=value, e.g. markov:student:distill.num_latents=32 (repeatable).",
)
_ONE = flags.DEFINE_string("run_one", None, "Internal: run this pipeline in this process.")
_TRAINS = flags.DEFINE_bool(
  "trains_teacher", False, "Internal: --run_one trains the shared teacher."
)
_ONE_PREPARE = flags.DEFINE_bool("prepare_data", False, "Internal: build the data sets, then exit.")


def _scaled(config, mult: float, name: str, role: str):
  """config with num_steps scaled by mult and the --override fields of (name, role) set."""
  config.train.num_steps = max(1, int(round(config.train.num_steps * mult)))
  config.train.ckpt_every = min(config.train.ckpt_every, config.train.num_steps)
  for spec in _OVERRIDES.value:
    who, target, assignment = spec.split(":", 2)
    if (who, target) == (name, role):
      field, value = assignment.split("=", 1)
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass  # a string
      config.update_from_flattened_dict({field: value})
  return config


def _finished(workdir: str, num_steps: int) -> bool:
  ckpts = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpts) and str(num_steps) in os.listdir(ckpts)


def _shares_teacher(name: str, overrides) -> bool:
  """Whether pipeline `name` samples its base pipeline's trained teacher: not a variant with
  its own teacher overrides, nor a di4c^2 round whose student override of teacher.workdir
  names the teacher itself (a student run, with student:teacher.kind=network)."""
  base = name.split("+")[0]
  return (
    PIPELINES[base][0] is not None
    and not any(o.startswith(f"{name}:teacher:") for o in overrides)
    and not any(o.startswith(f"{name}:student:teacher.workdir=") for o in overrides)
  )


def schedule(names, overrides) -> tuple[list[str], set[str]]:
  """(the order to start the pipelines in, the ones that train a shared teacher).

  Each base's shared teacher is trained by the base pipeline if it is listed, else by its
  first listed variant (`--pipelines=pydoc+s1,pydoc+s2` alone trains pydoc's teacher once);
  those trainers start first, so the variants waiting on them never wait on a pipeline that
  `--jobs` has not started yet."""
  trainers = {}
  for name in names:
    base = name.split("+")[0]
    if _shares_teacher(name, overrides) and (base not in trainers or name == base):
      trainers[base] = name
  first = [n for n in names if n in trainers.values()]
  return first + [n for n in names if n not in first], set(trainers.values())


def run_pipeline(name: str) -> None:
  import importlib  # pylint: disable=g-import-not-at-top

  from mixture_dd import distill, evaluate, runs, teacher_training

  base = name.split("+")[0]
  teacher_cfg, distill_cfg, eval_kw = PIPELINES[base]
  root = os.path.join(_WORKDIR.value, name)
  own_teacher = any(o.startswith(f"{name}:teacher:") for o in _OVERRIDES.value)
  teacher_dir = os.path.join(_WORKDIR.value, name if own_teacher else base, "teacher")
  dconf = importlib.import_module(f"mixture_dd.configs.{distill_cfg}").get_config()
  dconf = _scaled(dconf, _SMULT.value, name, "student")
  t0 = time.time()
  named = any(o.startswith(f"{name}:student:teacher.workdir=") for o in _OVERRIDES.value)
  if teacher_cfg is not None and not named:
    tconf = importlib.import_module(f"mixture_dd.configs.{teacher_cfg}").get_config()
    tconf = _scaled(tconf, _TMULT.value, name, "teacher")
    if own_teacher or name == base or _TRAINS.value:
      teacher_training.train_teacher(tconf, teacher_dir)
    else:  # the pipeline that trains it (`schedule`) runs beside this one
      while not _finished(teacher_dir, tconf.train.num_steps):
        time.sleep(5.0)
    dconf.teacher.workdir = teacher_dir
  print(f"[{name}] teacher ready ({time.time() - t0:.0f} s)", flush=True)
  distill.distill_student(dconf, os.path.join(root, "student"))
  print(f"[{name}] student ready ({time.time() - t0:.0f} s)", flush=True)
  student = runs.load_run(os.path.join(root, "student"))
  evaluate.evaluate(
    runs.teacher_run(student),
    student,
    [int(s) for s in _STEPS.value],
    _NUM.value,
    0,
    os.path.join(_OUT.value, name),
    student_steps=[int(s) for s in _STUDENT_STEPS.value],
    # One reference model (classifier, char LM) per data set, in the base pipeline's folder:
    # a lever's variant reuses it (a text one saves the char LM's training, minutes on a CPU).
    # Variants running at once may each train it; the first whole copy renamed into place
    # wins (reference_models._save), the same model, trained from the same seed.
    reference_dir=os.path.join(_WORKDIR.value, base, "reference"),
    **eval_kw,
  )
  print(f"[{name}] evaluated ({time.time() - t0:.0f} s)", flush=True)


def prepare_data(names) -> None:
  """Builds every data set the pipelines read, one at a time (pipelines running at once
  would otherwise build the same TFDS data set into the same folder together)."""
  import importlib  # pylint: disable=g-import-not-at-top

  from mixture_dd.data import pipeline  # pylint: disable=g-import-not-at-top

  for base in dict.fromkeys(n.split("+")[0] for n in names):
    teacher_cfg, distill_cfg, _ = PIPELINES[base]
    config = importlib.import_module(
      f"mixture_dd.configs.{teacher_cfg or distill_cfg}"
    ).get_config()
    for split in ("train", "test"):
      pipeline.load(config.data, split)


def main(argv):
  del argv
  if _ONE.value:
    run_pipeline(_ONE.value)
    return
  if _ONE_PREPARE.value:
    prepare_data(_WHICH.value)
    return
  unknown = {n.split("+")[0] for n in _WHICH.value} - set(PIPELINES)
  if unknown:
    raise app.UsageError(f"--pipelines: unknown {sorted(unknown)}; choose among {list(PIPELINES)}")
  os.makedirs(_OUT.value, exist_ok=True)
  argv = [a for a in sys.argv[1:] if not a.startswith("--pipelines")]
  me = [sys.executable, "-m", "benchmarks.step_reduction"]
  # Its own process on the CPU: the parent holds no accelerator memory.
  subprocess.run(
    [*me, "--prepare_data", f"--pipelines={','.join(_WHICH.value)}", *argv],
    check=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  order, trainers = schedule(_WHICH.value, _OVERRIDES.value)
  pending, running, status = order, {}, {}
  t0 = time.time()
  while pending or running:
    while pending and len(running) < _JOBS.value:
      name = pending.pop(0)
      log = open(os.path.join(_OUT.value, f"{name}.log"), "w")
      running[name] = subprocess.Popen(
        [*me, f"--run_one={name}", f"--trains_teacher={name in trainers}", *argv],
        # Pipelines share one accelerator: each takes memory as it needs it.
        env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"),
        stdout=log,
        stderr=subprocess.STDOUT,
      )
    time.sleep(2.0)
    for name, proc in list(running.items()):
      if proc.poll() is not None:
        status[name] = proc.returncode
        del running[name]
        print(f"{name}: exit {proc.returncode} at {time.time() - t0:.0f} s", flush=True)
  lines = ["# Step reduction: student at N against the teacher at N, 2N, 4N", ""]
  for name in _WHICH.value:
    md = os.path.join(_OUT.value, name, "results.md")
    lines += [f"## {name} (exit {status[name]})", ""]
    lines += [open(md).read()] if os.path.exists(md) else ["(no report: see the log)", ""]
  with open(os.path.join(_OUT.value, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  if any(status.values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
