"""A user's first hour with the launchers (issue 19).

A refused resume leaves the workdir byte-identical and a changed field is
recorded; every bad input is one line `error: ...` naming the field or flag,
exit status 2, nothing half-written; Ctrl-C saves the step and the rerun
matches an uninterrupted run; `--help` and `--show_config` say what exists;
the launchers run from outside the repository; a distillation names its
teacher first.

The bad inputs run in one process per launcher (`launcher.cli(argv)`, the
code path of the command line; importing JAX once per launcher instead of
once per input), from a directory outside the repository.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from mixture_dd import checkpoints, distill, runs, teacher_training, trainer
from mixture_dd.configs import tiny, tiny_distill
from mixture_dd.data import pipeline
from tests.conftest import run_and_signal

# The tiny teacher, shrunk: the same fields on the command line and in-process.
TINY = {
  "data.num_train": 2000,
  "data.num_test": 200,
  "model.width": 32,
  "model.depth": 1,
  "model.heads": 2,
  "train.batch_size": 64,
  "train.num_steps": 2,
  "train.log_every": 1,
  "train.ckpt_every": 1,
}


def _config(data_dir, **fields):
  c = tiny.get_config()
  for path, value in dict(TINY, **{"data.data_dir": str(data_dir)}, **fields).items():
    sec, name = path.split(".")
    c[sec][name] = value
  return c


def _args(data_dir, **fields):
  merged = dict(TINY, **{"data.data_dir": str(data_dir)}, **fields)
  return [f"--config.{k}={v}" for k, v in merged.items()]


def _env():
  # JAX_PLATFORMS and XLA_FLAGS (8 host devices) as in this process, so that a
  # launcher's run and an in-process run compile the same program.
  return dict(os.environ, JAX_PLATFORMS="cpu")


def _files(workdir) -> dict:
  out = {}
  for root, _, names in os.walk(workdir):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, workdir)] = f.read()
  return out


def _steps_logged(workdir) -> list[int]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.load(_config(d).data, "train")
  return d


@pytest.fixture(scope="module")
def teacher(data_dir, tmp_path_factory):
  """A 2-step tiny teacher run, checkpoints at steps 1 and 2."""
  w = str(tmp_path_factory.mktemp("teacher") / "w")
  teacher_training.train_teacher(_config(data_dir), w)
  return w


# ---------------------------------------------------------------------------
# 1. A refused resume leaves the run as it was; a changed field is recorded.
# ---------------------------------------------------------------------------


def test_a_refused_resume_leaves_every_file_of_the_workdir_byte_identical(
  teacher, data_dir, tmp_path, caplog
):
  w = str(tmp_path / "w")
  shutil.copytree(teacher, w)
  before = _files(w)
  with pytest.raises(checkpoints.IncompatibleCheckpoint, match="model.width: checkpoint has 32"):
    teacher_training.train_teacher(
      _config(data_dir, **{"model.width": 64, "train.num_steps": 4}), w
    )
  assert _files(w) == before  # config.json included: load_run still reads the run
  assert runs.load_run(w).step == 2

  # A changed non-model field (and more steps) is allowed, logged and
  # recorded. The newest checkpoint is damaged: the resume falls back to
  # step 1, and metrics.jsonl still has every step once.
  for root, _, names in os.walk(os.path.join(w, "checkpoints", "2", "state")):
    for n in names:
      with open(os.path.join(root, n), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(root, n)) // 3)
  with caplog.at_level("INFO", logger="mixture_dd"):
    teacher_training.train_teacher(_config(data_dir, **{"optim.lr": 2e-3, "train.num_steps": 3}), w)
  assert "changed config fields: optim.lr: 0.001 -> 0.002; train.num_steps: 2 -> 3" in caplog.text
  with open(os.path.join(w, checkpoints.CONFIG_HISTORY)) as f:
    history = [json.loads(line) for line in f]
  assert [h["event"] for h in history] == ["start", "changed"], history
  assert history[1]["step"] == 1
  assert history[1]["changed"] == {"optim.lr": [0.001, 0.002], "train.num_steps": [2, 3]}
  with open(os.path.join(w, "config.json")) as f:
    assert json.load(f)["optim"]["lr"] == 0.002
  assert _steps_logged(w) == [1, 2, 3]


# ---------------------------------------------------------------------------
# 2. Bad inputs: one line, exit 2, naming the field or flag; nothing written.
# ---------------------------------------------------------------------------

DRIVER = textwrap.dedent(
  """
  import contextlib, importlib, io, json, sys
  launcher = importlib.import_module(sys.argv[1])
  results = []
  for argv in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
      status = launcher.cli(["mdd", *argv])
    results.append([status, out.getvalue()])
  print(json.dumps(results))
  """
)


def _cases(teacher, data_dir, tmp):
  """{case: (launcher, argv, what the error line must name)}; W, R, S, O:
  outputs that must not exist afterwards."""
  t = teacher
  a_file = tmp / "a_file"
  a_file.write_text("not a directory")
  corrupt = tmp / "corrupt"
  shutil.copytree(teacher, corrupt)
  for root, _, names in os.walk(corrupt / "checkpoints"):
    for n in names:
      if f"{os.sep}state" in root:
        p = os.path.join(root, n)
        with open(p, "r+b") as f:
          f.truncate(os.path.getsize(p) // 3)
  w, r, s = f"--workdir={tmp / 'W'}", f"--out_dir={tmp / 'R'}", f"--out={tmp / 'S' / 'x'}"
  tiny_args = ["--config=tiny", *_args(data_dir)]
  ev = [f"--teacher_workdir={t}", r, "--steps=1", "--num_samples=4"]
  return {
    # config fields
    "misspelled field": (
      "train",
      ["--config=tiny", w, "--config.train.num_stepz=3"],
      ["--config.train.num_stepz", "did you mean --config.train.num_steps?"],
    ),
    "guessed field": (
      "train",
      ["--config=tiny", w, "--config.optim.learning_rate=1e-3"],
      ["--config.optim.learning_rate", "config.optim has: b1, b2, clip", "lr"],
    ),
    "field of another section": (
      "train",
      ["--config=tiny", w, "--config.train.lr=1e-3"],
      ["did you mean --config.optim.lr?"],
    ),
    "distill data field": (
      "distill",
      ["--config=digits_distill:ci", w, "--config.data.nmae=digits"],
      ["--config.data.nmae", "did you mean --config.data.name?"],
    ),
    "wrong value type": (
      "train",
      ["--config=tiny", w, "--config.train.num_steps=abc"],
      ["--config.train.num_steps=abc"],
    ),
    "field under a value": (
      "train",
      ["--config=tiny", w, "--config.train.num_steps.x=1"],
      ["--config.train.num_steps.x", "is a value, not a section"],
    ),
    # config files
    "missing config file": (
      "train",
      ["--config=configs/nope.py", w],
      ["--config=configs/nope.py", "no config file", "tiny_distill"],
    ),
    "misspelled config name": ("train", ["--config=tinyy", w], ["did you mean 'tiny'?"]),
    "config argument refused": (
      "train",
      ["--config=digits:bogus", w],
      ["--config=digits:bogus", "choose full or ci"],
    ),
    # missing and bad flags
    "missing --config": ("train", [w], ["--config is required"]),
    "missing --workdir": ("train", ["--config=tiny"], ["--workdir is required"]),
    "missing --out_dir": ("evaluate", [f"--teacher_workdir={t}"], ["--out_dir is required"]),
    "stray argument": ("train", ["--config=tiny", w, "stray"], ["unexpected arguments"]),
    "evaluate --batch_size=0": ("evaluate", [*ev, "--batch_size=0"], ["--batch_size=0"]),
    "evaluate --steps=abc": ("evaluate", [*ev[:2], "--steps=abc"], ["--steps=abc"]),
    "evaluate --hybrid_teacher_steps=-1": (
      "evaluate",
      [*ev, "--hybrid_teacher_steps=-1"],
      ["--hybrid_teacher_steps=-1"],
    ),
    "hybrid without a student": (
      "evaluate",
      [*ev, "--hybrid_teacher_steps=1"],
      ["--hybrid_teacher_steps", "--student_workdir"],
    ),
    "sample --steps=abc": ("sample", [f"--workdir={t}", s, "--steps=abc"], ["--steps=abc"]),
    "sample --num_samples=0": (
      "sample",
      [f"--workdir={t}", s, "--num_samples=0"],
      ["--num_samples=0"],
    ),
    "hybrid sample without --second_steps": (
      "sample",
      [f"--workdir={t}", s, f"--second_workdir={t}"],
      ["--second_steps"],
    ),
    # outputs that cannot be written
    "unwritable --workdir": (
      "train",
      [*tiny_args, f"--workdir={a_file}/w"],
      ["--workdir=", "is a file, not a directory"],
    ),
    "unwritable --out_dir": (
      "evaluate",
      [*ev[:1], f"--out_dir={a_file}/r"],
      ["--out_dir=", "is a file, not a directory"],
    ),
    "unwritable --out": (
      "sample",
      [f"--workdir={t}", f"--out={a_file}/x"],
      ["--out=", "is a file, not a directory"],
    ),
    # runs that are not there: the flag the user typed is named
    "sample on a missing run": (
      "sample",
      [f"--workdir={tmp / 'nope'}", s],
      ["--workdir=", "is not a run (no such directory)"],
    ),
    "evaluate on a missing run": (
      "evaluate",
      [f"--teacher_workdir={tmp / 'nope'}", r],
      ["--teacher_workdir=", "is not a run"],
    ),
    "evaluate on a missing student": (
      "evaluate",
      [*ev, f"--student_workdir={tmp}"],
      ["--student_workdir=", "no config.json"],
    ),
    "distill from a missing teacher": (
      "distill",
      ["--config=digits_distill:ci", w, f"--config.teacher.workdir={tmp / 'nope'}"],
      ["config.teacher.workdir must be the --workdir"],
    ),
    # damaged checkpoints
    "every checkpoint corrupt": (
      "train",
      [*tiny_args, f"--workdir={corrupt}"],
      ["none of the checkpoints", str(corrupt), "steps [2, 1]"],
    ),
    # a teacher the config cannot use
    "teacher workdir on an ideal-teacher config": (
      "distill",
      ["--config=tiny_distill", w, f"--config.teacher.workdir={t}"],
      ["config.teacher.workdir=", "config.teacher.kind='ideal'"],
    ),
    "markov_distill on a tiny teacher": (
      "distill",
      ["--config=markov_distill", w, f"--config.teacher.workdir={t}"],
      ["config.data.name='markov'", "trained on 'tiny'"],
    ),
  }


GOOD = {
  "help": ("train", ["--help"]),
  "help of evaluate": ("evaluate", ["--help"]),
  "show_config": ("train", ["--config=tiny", "--show_config"]),
  "show_config, README path from elsewhere": (
    "distill",
    ["--config=configs/tiny_distill.py", "--show_config"],
  ),
}


@pytest.fixture(scope="module")
def outcomes(teacher, data_dir, tmp_path_factory):
  """{case: (exit status, output)} of every case above, one driver process
  per launcher (run side by side), from a directory outside the repository."""
  tmp = tmp_path_factory.mktemp("bad_inputs")
  cases = _cases(teacher, data_dir, tmp)
  by_launcher = {}
  for name, (launcher, argv, *_) in list(cases.items()) + list(GOOD.items()):
    by_launcher.setdefault(launcher, []).append((name, argv))
  procs = {
    launcher: subprocess.Popen(
      [sys.executable, "-c", DRIVER, f"launch.{launcher}", json.dumps([a for _, a in todo])],
      cwd=tmp,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for launcher, todo in by_launcher.items()
  }
  results = {}
  for launcher, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    for (name, _), r in zip(by_launcher[launcher], got, strict=True):
      results[name] = tuple(r)
  return cases, results, tmp


def _check(outcomes, names):
  cases, results, _ = outcomes
  for name in names:
    status, out = results[name]
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in out, (name, status, out)
    for needle in cases[name][2]:
      assert needle in lines[0], (name, needle, lines[0])


def test_config_field_mistakes_are_one_line_naming_the_field(outcomes):
  _check(
    outcomes,
    [
      "misspelled field",
      "guessed field",
      "field of another section",
      "distill data field",
      "wrong value type",
      "field under a value",
    ],
  )


def test_config_file_mistakes_are_one_line(outcomes):
  _check(outcomes, ["missing config file", "misspelled config name", "config argument refused"])


def test_missing_and_bad_flags_are_one_line_naming_the_flag(outcomes):
  _check(
    outcomes,
    [
      "missing --config",
      "missing --workdir",
      "missing --out_dir",
      "stray argument",
      "evaluate --batch_size=0",
      "evaluate --steps=abc",
      "evaluate --hybrid_teacher_steps=-1",
      "hybrid without a student",
      "sample --steps=abc",
      "sample --num_samples=0",
      "hybrid sample without --second_steps",
    ],
  )


def test_unwritable_outputs_are_refused_before_any_work(outcomes):
  _check(outcomes, ["unwritable --workdir", "unwritable --out_dir", "unwritable --out"])


def test_missing_runs_name_the_flag_the_user_typed(outcomes):
  _check(
    outcomes,
    [
      "sample on a missing run",
      "evaluate on a missing run",
      "evaluate on a missing student",
      "distill from a missing teacher",
    ],
  )


def test_every_checkpoint_corrupt_is_one_line(outcomes):
  _check(outcomes, ["every checkpoint corrupt"])


def test_a_teacher_the_config_cannot_use_is_refused(outcomes):
  _check(
    outcomes, ["teacher workdir on an ideal-teacher config", "markov_distill on a tiny teacher"]
  )


def test_nothing_is_left_half_written(outcomes):
  _, _, tmp = outcomes
  for name in ("W", "R", "S"):
    assert not (tmp / name).exists(), name
  assert sorted(p.name for p in (tmp / "corrupt" / "checkpoints").iterdir()) == ["1", "2"]


# ---------------------------------------------------------------------------
# 4. What exists: --help and --show_config.
# ---------------------------------------------------------------------------


def test_help_lists_the_launchers_own_flags(outcomes):
  _, results, _ = outcomes
  status, out = results["help"]
  assert status == 0, out
  for flag in ("--config", "--workdir", "--show_config", "--debug"):
    assert flag in out, (flag, out)
  assert "--helpfull" in out and "--jax_" not in out  # the library flags stay in --helpfull
  status, out = results["help of evaluate"]
  assert status == 0 and "--teacher_workdir" in out and "--hybrid_teacher_steps" in out, out


def _leaves(d, prefix="config"):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _leaves(v, f"{prefix}.{k}")
    else:
      yield f"{prefix}.{k}", v


def test_show_config_prints_every_field_with_its_value_and_type(outcomes):
  _, results, _ = outcomes
  status, out = results["show_config"]
  assert status == 0, out
  printed = dict(re.findall(r"^(config\.[\w.]+) = (.*)$", out, re.M))
  config = tiny.get_config()
  expected = dict(_leaves(config.to_dict()))
  assert set(printed) == set(expected), set(printed) ^ set(expected)
  for path, value in expected.items():
    *sections, name = path.split(".")[1:]
    node = config
    for sec in sections:
      node = node[sec]
    kind = node.get_type(name).__name__ + (" or None" if value is None else "")
    assert printed[path] == f"{value!r}  ({kind})", (path, printed[path])
  # From outside the repository, the README's configs/NAME.py means the installed file.
  status, out = results["show_config, README path from elsewhere"]
  assert status == 0 and "config.teacher.kind = 'ideal'  (str)" in out, out
  assert "come from the teacher's run" in out


# ---------------------------------------------------------------------------
# 3. Ctrl-C; 6. from outside the repository.
# ---------------------------------------------------------------------------


def test_ctrl_c_saves_the_step_and_the_rerun_matches_an_uninterrupted_run(data_dir, tmp_path):
  """A real SIGINT to `python -m launch.train` run from outside the
  repository with an installed config by name; the rerun of the same
  command resumes and ends where an uninterrupted run ends, bit for bit."""
  fields = {"train.num_steps": 120, "train.log_every": 5, "train.ckpt_every": 1000}
  w = tmp_path / "w"
  cmd = [sys.executable, "-m", "launch.train", "--config=tiny", *_args(data_dir, **fields)]
  cmd.append(f"--workdir={w}")
  rc, log = run_and_signal(cmd, "teacher step 5/", _env(), str(tmp_path), signal.SIGINT)
  assert rc == trainer.EXIT_INTERRUPTED, log[-3000:]
  assert "Traceback" not in log, log[-3000:]
  m = re.search(r"interrupted \(Ctrl-C\); saved step (\d+) in \S+\. Run the same command", log)
  assert m, log[-3000:]
  step = int(m.group(1))
  assert 5 <= step < 120 and os.path.isdir(w / "checkpoints" / str(step)), (step, log[-2000:])

  proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from step {step}" in proc.stderr
  assert _steps_logged(w) == list(range(5, 121, 5))

  straight = jax.device_get(
    teacher_training.train_teacher(_config(data_dir, **fields), str(tmp_path / "s"))
  )
  resumed = runs.load_run(str(w), ema=False)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_SECOND_CTRL_C = """
import os, signal, time
from mixture_dd import trainer
# As in a terminal: a process started by a test worker may inherit SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
p = trainer._Preemption(None)
try:
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.05)
  assert p.reached(1) is trainer.Interrupted, "the first Ctrl-C must ask for a save"
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    raise SystemExit("the second Ctrl-C did not stop the loop")
  except KeyboardInterrupt:
    pass
finally:
  p.close()
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
# Started with Ctrl-C ignored (`nohup cmd &` from a script): the run stays deaf to it.
signal.signal(signal.SIGINT, signal.SIG_IGN)
p = trainer._Preemption(None)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.05)
assert p.reached(1) is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
p.close()
assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
print("ok")
"""


def test_a_second_ctrl_c_stops_at_once():
  """The first Ctrl-C asks for a save at the end of the step; the second
  raises KeyboardInterrupt where the loop is; a run started with Ctrl-C ignored
  stays deaf to it. In a fresh process: a signal reaches Python's main thread,
  which under pytest-xdist is not the test's."""
  proc = subprocess.run(
    [sys.executable, "-c", _SECOND_CTRL_C],
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_installed_commands_run_from_any_directory(tmp_path):
  bindir = os.path.dirname(sys.executable)
  proc = subprocess.run(
    [os.path.join(bindir, "mdd-sample"), "--help"],
    cwd=tmp_path,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:] + " (pip install -e . installs mdd-*)"
  assert "--second_workdir" in proc.stdout


# ---------------------------------------------------------------------------
# 5. A distillation names its teacher first.
# ---------------------------------------------------------------------------


def test_a_distillation_first_names_its_teacher_and_data(teacher, data_dir, tmp_path, caplog):
  c = tiny_distill.get_config()
  c.teacher.update(kind="network", workdir=teacher, latent_nodes=2)
  c.data.update(data_dir=str(data_dir), num_train=2000, num_test=200)
  c.model.update(width=32, depth=1, heads=2)  # the teacher's
  c.distill.num_latents = 2
  c.train.update(batch_size=8, num_steps=1, log_every=1, ckpt_every=1)
  with caplog.at_level("INFO", logger="mixture_dd"):
    distill.distill_student(c, str(tmp_path / "s"))
  lines = [r.getMessage() for r in caplog.records if r.name == "mixture_dd"]
  first_step = next(i for i, ln in enumerate(lines) if "distill step" in ln)
  head = lines[:first_step]
  told = [ln for ln in head if ln.startswith("distill: teacher")]
  assert told, head
  assert os.path.abspath(teacher) in told[0] and "at step 2" in told[0], told
  assert "(data tiny, process masked/linear)" in told[0], told
  assert any(ln.startswith("distill: data tiny") for ln in head), head
