r"""The spread of the suite's statistical tests over seeds and CPU instruction sets.

A test whose pass depends on training must hold on any x86_64 machine: XLA
compiles CPU code for the processor it finds, and a few hundred training steps
amplify the rounding. This runs each test's measurement (a `measure(seed)`
function in its test module, returning a dict of numbers) for several seeds
and with XLA's CPU code generation capped at several instruction sets, each in
its own process, and writes one table per measurement with its min / median /
max, from which the tests' thresholds are set (with a margin).

The .json beside --out keeps every result with the machine it ran on; a run
of some measurements replaces their results there and keeps the others' (so
re-measuring one test after a recipe change leaves the rest of the file, each
table naming its own machine). --fresh starts the file over.

  python -m benchmarks.spread --out=reports/spread.md [--seeds=0,1,2,3,4] \
      [--isas=default,AVX2,AVX] [--measures=student_start,distill_e2e,bf16] \
      [--jobs=1] [--cores_per_job=0] [--note=...] [--fresh]

--jobs runs that many processes at once; --cores_per_job pins each to its own
cores (0: no pinning), so a 16-core machine measures 8 two-core runs at once.
"""

import importlib.metadata
import itertools
import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

# name -> test module holding `measure(seed) -> dict[str, float]`.
MEASURES = {
  "student_start": "tests.test_student_start",
  "distill_e2e": "tests.test_distill_e2e",
  "bf16": "tests.test_networks",
}

_OUT = flags.DEFINE_string("out", "reports/spread.md", "Markdown table (and .json beside it).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds per measurement.")
_ISAS = flags.DEFINE_list(
  "isas", ["default", "AVX2"], "XLA CPU instruction-set caps (--xla_cpu_max_isa); default: none."
)
_WHICH = flags.DEFINE_list("measures", list(MEASURES), f"Among {list(MEASURES)}.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Processes at once.")
_CORES = flags.DEFINE_integer("cores_per_job", 0, "Cores each process is pinned to (0: none).")
_NOTE = flags.DEFINE_string("note", "", "Said of the machine in the table, e.g. its load.")
_FRESH = flags.DEFINE_bool("fresh", False, "Drop the results already in the .json beside --out.")

_CHILD = """
import json, sys, importlib
mod = importlib.import_module(sys.argv[1])
print("SPREAD_RESULT " + json.dumps(mod.measure(int(sys.argv[2]))))
"""


def _env(isa: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  flags_ = [f for f in env.get("XLA_FLAGS", "").split() if "xla_cpu_max_isa" not in f]
  if isa != "default":
    flags_.append(f"--xla_cpu_max_isa={isa}")
  env["XLA_FLAGS"] = " ".join(flags_)
  return env


def _start(job, slot: int):
  name, seed, isa = job
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cores = None
  if _CORES.value:
    cores = set(range(slot * _CORES.value, (slot + 1) * _CORES.value))
  return subprocess.Popen(
    [sys.executable, "-c", _CHILD, MEASURES[name], str(seed)],
    cwd=root,
    env=_env(isa),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
  )


def _result(out: str) -> dict:
  for line in out.splitlines():
    if line.startswith("SPREAD_RESULT "):
      return json.loads(line[len("SPREAD_RESULT ") :])
  return {"error": out[-2000:]}


def run_all(jobs: list, on_result=None) -> dict:
  """{(name, seed, isa): measured dict}, `_JOBS` processes at a time; `on_result(done)`
  after each (so a run stopped early leaves its table)."""
  pending, running, done = list(jobs), {}, {}
  t0 = time.time()
  while pending or running:
    free = [s for s in range(_JOBS.value) if s not in running]
    while pending and free:
      job, slot = pending.pop(0), free.pop(0)
      running[slot] = (job, _start(job, slot), time.time())
    time.sleep(1.0)
    for slot, (job, proc, started) in list(running.items()):
      if proc.poll() is None:
        continue
      done[job] = dict(_result(proc.stdout.read()), seconds=round(time.time() - started, 1))
      del running[slot]
      left = len(pending) + len(running)
      rate = (time.time() - t0) / len(done)
      print(
        f"{job}: {done[job]} ({len(done)}/{len(jobs)}, ETA {rate * left / max(1, _JOBS.value):.0f} s)",
        flush=True,
      )
      if on_result:
        on_result(done)
  return done


def table(name: str, rows: dict, machine: str) -> list[str]:
  keys = sorted({k for r in rows.values() for k in r if k not in ("error", "seconds")})
  lines = [
    f"## {name} ({MEASURES[name]}.measure)",
    "",
    f"Measured on {machine}.",
    "",
    "| ISA | seed | " + " | ".join(keys) + " | s |",
    "|---|---|" + "---|" * (len(keys) + 1),
  ]
  for (_, seed, isa), r in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][1])):
    cells = [f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "" for k in keys]
    err = " (error)" if "error" in r else ""
    lines.append(f"| {isa} | {seed}{err} | " + " | ".join(cells) + f" | {r['seconds']} |")
  for stat, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
    cells = []
    for k in keys:
      vals = [r[k] for r in rows.values() if isinstance(r.get(k), (int, float))]
      cells.append(f"{fn(vals):.4g}" if vals else "")
    lines.append(f"| **{stat}** | | " + " | ".join(cells) + " | |")
  return lines + [""]


def main(argv):
  del argv
  unknown = set(_WHICH.value) - set(MEASURES)
  if unknown:
    raise app.UsageError(f"--measures: unknown {sorted(unknown)}; choose among {list(MEASURES)}")
  jobs = list(itertools.product(_WHICH.value, [int(s) for s in _SEEDS.value], _ISAS.value))
  kept, machines = ({}, {}) if _FRESH.value else _read_kept(_json_path())
  here = _machine()
  for name in _WHICH.value:
    kept = {j: r for j, r in kept.items() if j[0] != name}
    machines[name] = here
  done = run_all(jobs, lambda done: write({**kept, **done}, machines))
  print(write({**kept, **done}, machines))


def _json_path() -> str:
  return os.path.splitext(_OUT.value)[0] + ".json"


def _machine() -> str:
  cpu = next(
    (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
    "unknown CPU",
  )
  pinned = f", {_CORES.value} per run" if _CORES.value else ""
  note = f" ({_NOTE.value})" if _NOTE.value else ""
  return f"{cpu}, {os.cpu_count()} cores{pinned}, jax {importlib.metadata.version('jax')}{note}"


def _read_kept(path: str) -> tuple[dict, dict]:
  """({(name, seed, isa): result}, {name: machine}) of an earlier run's .json (none: empty)."""
  if not os.path.exists(path):
    return {}, {}
  with open(path) as f:
    old = json.load(f)
  results = {(n, s, i): r for n, s, i, r in old["results"] if n in MEASURES}
  # Files written before machines were recorded per measurement name only the CPU.
  machines = old.get("machines") or {n: old.get("cpu", "unknown CPU") for n, _, _ in results}
  return results, machines


def write(done: dict, machines: dict) -> str:
  """The markdown tables (returned) in --out, and every result in the .json beside it."""
  lines = ["# Spread of the statistical tests over seeds and XLA CPU instruction sets", ""]
  for name in MEASURES:
    rows = {j: r for j, r in done.items() if j[0] == name}
    lines += table(name, rows, machines.get(name, "unknown machine")) if rows else []
  text = "\n".join(lines)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(text + "\n")
  with open(_json_path(), "w") as f:
    json.dump({"machines": machines, "results": [[*j, r] for j, r in done.items()]}, f, indent=1)
  return text


if __name__ == "__main__":
  app.run(main)
