"""Test set-up: 8 host CPU devices so sharding tests run anywhere, XLA's cheaper compilation, one
compilation cache and one reference-model cache per run, and shared statistical helpers."""

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# XLA's cheaper CPU compilation: the suite's time is mostly compiling small programs (about
# 3x faster to compile, slower to run). Results can differ from the default flags' in the last
# bits (LLVM at -O0 fuses no multiply-adds; a 1200-step distillation's exact TV moved from 0.093
# to 0.106), so the tests whose thresholds come from a measured spread run their measurement in
# a child with the default code generation (`measure_with_default_codegen`), as
# benchmarks.spread measured it. Every other test passes with these flags and with the default
# ones.
FAST_COMPILE_XLA_FLAGS = (
  "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

# Must happen before jax is imported anywhere in the test session: 8 host devices, so sharding
# tests run anywhere.
os.environ.setdefault(
  "XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_XLA_FLAGS}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache per test run, shared by both xdist workers and every
# subprocess they start (launchers, notebooks): the suite compiles the same small programs
# many times over (the CI-scale demo: 92 s of CPU with an empty cache, 27 s with a warm one).
# A cached program is the same executable, so results are bit-identical; an unreadable entry
# (a worker reading what another is still writing) is recompiled by JAX with a warning. The
# cache starts empty each run, so the suite's time is what a fresh machine sees; the process
# that made it (the xdist controller, or plain pytest) removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mixture_dd-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Likewise one reference-model cache per run (the digits classifier, the char LM: trained once,
# by whichever test needs one first), never the user's ~/.cache.
if "MDD_REFERENCE_ROOT" not in os.environ:
  os.environ["MDD_REFERENCE_ROOT"] = tempfile.mkdtemp(prefix="mixture_dd-reference-")
  atexit.register(shutil.rmtree, os.environ["MDD_REFERENCE_ROOT"], ignore_errors=True)

import numpy as np  # noqa: E402  (after the environment above, before jax loads)
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int | None = None, **extra) -> dict:
  """os.environ for a launcher subprocess: the CPU backend, `devices` fake host devices (None:
  JAX's default, one) and FAST_COMPILE_XLA_FLAGS; `extra` entries added last."""
  flags = FAST_COMPILE_XLA_FLAGS
  if devices is not None:
    flags = f"--xla_force_host_platform_device_count={devices} {flags}"
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, **extra)


_MEASURE_CHILD = """
import importlib, json, sys
m = importlib.import_module(sys.argv[1]).measure(int(sys.argv[2]), *sys.argv[3:])
print("MEASURED " + json.dumps(m))
"""


def python_child(code: str, *args: str, env: dict | None = None, timeout: int = 300):
  """`python -c code *args` in the repository (env: subprocess_env() by default), its output
  captured; fails the test, with the child's stderr, if it exits non-zero. For a module that
  must not be imported into the test process (e.g. one that defines absl flags at import)."""
  proc = subprocess.run(
    [sys.executable, "-c", code, *args],
    cwd=REPO,
    env=subprocess_env() if env is None else env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def measure_with_default_codegen(module: str, seed: int, *args: str) -> dict:
  """`module`.measure(seed, *args) in a child process with XLA's default CPU code generation on
  one device: the configuration benchmarks.spread measures each threshold's spread in."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = python_child(_MEASURE_CHILD, module, str(seed), *args, env=env, timeout=900)
  line = [x for x in proc.stdout.splitlines() if x.startswith("MEASURED ")][-1]
  return json.loads(line[len("MEASURED ") :])


def chi2_threshold(num_cells: int, alpha: float = 1e-3) -> float:
  """The (1 - alpha) quantile of chi-square with num_cells - 1 dof."""
  return float(stats.chi2.ppf(1.0 - alpha, num_cells - 1))


def chi2_stat(counts, probs) -> tuple[float, int]:
  """Pearson statistic over cells with non-negligible expected count.

  Cells whose expected count is below 5 are pooled into one, the usual rule
  that keeps the chi-square approximation valid. Returns (stat, cells).
  """
  counts = np.asarray(counts, np.float64)
  n = counts.sum()
  expected = n * np.asarray(probs, np.float64)
  big = expected >= 5
  obs = list(counts[big])
  exp = list(expected[big])
  if (~big).any():
    obs.append(counts[~big].sum())
    exp.append(expected[~big].sum())
  obs, exp = np.array(obs), np.array(exp)
  keep = exp > 0
  if np.any(obs[~keep] > 0):
    return float("inf"), len(obs)
  return float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep])), int(keep.sum())


def assert_chi2(counts, probs, alpha=1e-3):
  stat, cells = chi2_stat(counts, probs)
  assert cells >= 2, "degenerate test: fewer than 2 cells"
  thr = chi2_threshold(cells, alpha)
  assert stat < thr, f"chi2 {stat:.1f} >= threshold {thr:.1f} ({cells} cells)"


# The longest files first (longest-processing-time order; per-file seconds from a 2-worker run
# on the dev machine, 2026-11-30, with the fast-compile flags: notebooks ~130, multiprocess
# ~100, demo ~70, accelerator benchmark ~45, student start ~30, distill e2e ~30). Under
# `--dist loadfile` a free worker takes the next file in collection order, so a long file
# collected last ran alone at the end.
SLOW_FIRST = (
  "test_notebooks.py",
  "test_multiprocess.py",
  "test_demo.py",
  "test_benchmark_accelerator.py",
  "test_student_start.py",
  "test_distill_e2e.py",
)


def random_log_probs(key, b, l, d, s):
  """Sharp random component log-probabilities `[b, l, d, s]` (a mixture's lp)."""
  import jax  # here, not at the top: the xdist controller never needs jax

  return jax.nn.log_softmax(2.0 * jax.random.normal(key, (b, l, d, s)), -1)


def perturbed_params(params, seed):
  """Every weight moved off its init (zero kernels too), so no path is trivially 0."""
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(a + 0.3 * rng.normal(size=a.shape), a.dtype), params)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))


@pytest.fixture
def rng():
  return np.random.default_rng(0)


# A test worker may run with Ctrl-C ignored, which its children inherit (and a run started so
# stays deaf to Ctrl-C); a child that is sent Ctrl-C first puts Python's handler back, as from a
# terminal. (Not Popen's preexec_fn: that forks the multithreaded worker before exec.)
_AS_FROM_A_TERMINAL = (
  "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
  "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def run_and_signal(cmd, marker: str, env: dict, cwd: str, sig=signal.SIGTERM, timeout=300):
  """Starts `cmd`, sends it `sig` (SIGTERM: a preemption notice; SIGINT: a
  Ctrl-C) once a line of its stderr contains `marker`, and waits. Returns
  (exit status, stderr)."""
  if sig == signal.SIGINT:  # `python -m module args` with Python's Ctrl-C handler put back
    assert cmd[1] == "-m", cmd
    cmd = [cmd[0], "-c", _AS_FROM_A_TERMINAL, *cmd[2:]]
  proc = subprocess.Popen(
    cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
  )
  lines = []
  try:
    deadline = time.time() + timeout
    for line in proc.stderr:
      lines.append(line)
      if marker in line:
        proc.send_signal(sig)
        break
      assert time.time() < deadline, "".join(lines[-20:])
    rest = proc.stderr.read()
    rc = proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  return rc, "".join(lines) + rest
