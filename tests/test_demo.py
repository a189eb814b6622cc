"""The README's main job, end to end at CI scale, as a real subprocess, and
what a preemption (SIGTERM) in the middle of it does."""

import json
import os
import subprocess
import sys

import pytest

from mixture_dd import trainer
from tests.conftest import REPO, run_and_signal, subprocess_env

REPORT_FILES = (
  "results.json",
  "results.md",
  "quality_vs_steps.png",
  "panels_N1.png",
  "panels_N2.png",
)
# Wall-clock fields differ between runs; every other number must not.
TIMING = ("sample_time_s", "compile_s")


def _demo_cmd(workdir, out, data_dir):
  return [
    sys.executable,
    "-m",
    "launch.demo",
    "--scale=ci",
    f"--workdir={workdir}",
    f"--out_dir={out}",
    "--steps=1,2",
    "--student_steps=1,2",
    f"--data_dir={data_dir}",
  ]


def _env():
  return subprocess_env()


def _numbers(out):
  rows = json.loads((out / "results.json").read_text())["rows"]
  return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted CI-scale demo: (report dir, TFDS dir)."""
  tmp = tmp_path_factory.mktemp("demo")
  out, data_dir = tmp / "report", tmp / "tfds"
  proc = subprocess.run(
    _demo_cmd(tmp / "w", out, data_dir),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, data_dir


def test_demo_runs_end_to_end_and_writes_every_report_file(straight):
  out, _ = straight
  for name in REPORT_FILES:
    assert (out / name).exists(), name
  assert any(p.suffix == ".png" for p in (out / "samples").iterdir())
  md = (out / "results.md").read_text()
  assert "| teacher | 2 |" in md and "| student | 2 |" in md
  # The report names the checkpoints its numbers come from.
  assert "teacher " in md and "at step 60" in md and "distilled from" in md


def test_sigterm_in_the_teacher_stage_stops_the_demo_and_a_rerun_matches(straight, tmp_path):
  out, data_dir = straight
  workdir, out2 = tmp_path / "w", tmp_path / "report"
  # The preemption notice arrives while the teacher trains.
  rc, log = run_and_signal(_demo_cmd(workdir, out2, data_dir), "teacher step 10/", _env(), REPO)
  assert rc == trainer.EXIT_PREEMPTED, log[-3000:]
  assert "Traceback" not in log and "Run the same command again" in log, log[-3000:]
  # The demo stopped there: no student, no evaluation, no report file.
  assert not (workdir / "student").exists()
  assert not out2.exists() or not any(out2.iterdir()), sorted(os.listdir(out2))
  saved = [int(s) for s in os.listdir(workdir / "teacher" / "checkpoints") if s.isdigit()]
  assert saved and 10 <= max(saved) < 60, saved

  # The same command resumes the teacher and finishes; same numbers as straight.
  proc = subprocess.run(
    _demo_cmd(workdir, out2, data_dir),
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed from step {max(saved)}" in proc.stderr
  assert _numbers(out2) == _numbers(out)
