"""Smoke test: the package imports, and the three launchers run end to end.

One teacher run (launch.train, 2 steps), one Di4C run from that teacher (launch.distill,
2 steps: restores the teacher's Orbax checkpoint), one sample from the student
(launch.sample). Each is a real subprocess through the command-line flags only, so this
test does not depend on internal APIs. `make smoke` runs this file alone: CI runs it on
the second supported Python (the whole suite runs on the first).
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300

# A model as small as the tiny family allows, identical for teacher and student.
SMALL = [
  "--config.model.width=32",
  "--config.model.depth=1",
  "--config.model.heads=2",
  "--config.data.num_train=512",
  "--config.data.num_test=64",
  "--config.train.batch_size=16",
  "--config.train.num_steps=2",
  "--config.train.log_every=1",
  "--config.train.ckpt_every=2",
  "--config.train.sample_every=0",
  "--config.optim.warmup_steps=1",
]


def _run(module, *args, tmp_path):
  env = dict(
    os.environ,
    JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
    XLA_FLAGS="",
    TF_CPP_MIN_LOG_LEVEL="3",
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
  )
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
  )
  assert proc.returncode == 0, (
    f"{module} {' '.join(args)} exited {proc.returncode}\n"
    f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
  )
  return proc


def test_package_imports():
  import jax

  import mixture_dd
  from mixture_dd import distill, samplers, teacher_training  # noqa: F401

  assert jax.devices()
  assert mixture_dd.__name__ == "mixture_dd"


def test_train_distill_sample_through_the_launchers(tmp_path):
  data = f"--config.data.data_dir={tmp_path / 'tfds'}"
  teacher, student = tmp_path / "teacher", tmp_path / "student"

  _run(
    "launch.train",
    f"--config={REPO}/configs/tiny.py",
    f"--workdir={teacher}",
    data,
    *SMALL,
    tmp_path=tmp_path,
  )
  assert os.listdir(teacher), "launch.train wrote nothing"

  _run(
    "launch.distill",
    f"--config={REPO}/configs/tiny_distill.py",
    f"--workdir={student}",
    data,
    *SMALL,
    "--config.teacher.kind=network",
    f"--config.teacher.workdir={teacher}",
    "--config.distill.num_latents=4",
    tmp_path=tmp_path,
  )
  assert os.listdir(student), "launch.distill wrote nothing"

  out = tmp_path / "samples" / "student_N2"
  proc = _run(
    "launch.sample",
    f"--workdir={student}",
    "--steps=2",
    "--num_samples=8",
    f"--out={out}",
    tmp_path=tmp_path,
  )
  assert "8 samples in" in proc.stdout, proc.stdout[-2000:]
  npz = out.parent / (out.name + ".npz")
  assert npz.exists(), sorted(os.listdir(out.parent))
  import numpy as np

  with np.load(npz) as f:
    arrays = [f[k] for k in f.files]
  x = next(a for a in arrays if a.ndim == 2)
  assert x.shape == (8, 3)  # tiny family: D = 3 tokens
  assert x.min() >= 0 and x.max() < 3  # S = 3 symbols, no mask token left
