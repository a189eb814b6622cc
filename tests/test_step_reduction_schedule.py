"""benchmarks.step_reduction's schedule: which pipeline trains each shared teacher, and in what
order the pipelines start.

The variants of a pipeline wait for its teacher; before `schedule`, only the base pipeline
trained it, so `--pipelines=pydoc_local+s1,pydoc_local+c3k` (variants without their base) waited
forever, and so did a base listed after its variants with `--jobs=1`. The module defines its
absl flags at import (tests/test_benchmark_imports.py), so it is imported in a child process.
"""

import json

from conftest import python_child

_CHILD = """
import importlib, json, sys
schedule = importlib.import_module("benchmarks.step_reduction").schedule
for case in json.loads(sys.argv[1]):
  order, trainers = schedule(case["names"], case["overrides"])
  print("SCHEDULE " + json.dumps([order, sorted(trainers)]))
"""

_CASES = [
  # Variants alone: the first trains the shared teacher and starts first.
  {
    "names": ["pydoc_local+s1", "pydoc_local+c3k"],
    "overrides": [],
    "want": [["pydoc_local+s1", "pydoc_local+c3k"], ["pydoc_local+s1"]],
  },
  # The base listed last trains it, and starts first (with --jobs=1 the variants wait on it).
  {
    "names": ["markov+a", "markov+b", "markov"],
    "overrides": [],
    "want": [["markov", "markov+a", "markov+b"], ["markov"]],
  },
  # An exact teacher trains nothing; a variant with its own teacher trains its own (not a
  # shared one); a di4c^2 round names its teacher; the next variant trains the shared one.
  {
    "names": ["markov_exact+x", "pydoc+t", "pydoc+r2", "pydoc+s1", "digits"],
    "overrides": [
      "pydoc+t:teacher:train.num_steps=10",
      "pydoc+r2:student:teacher.workdir=W/pydoc/student",
      "pydoc+r2:student:teacher.kind=network",
    ],
    "want": [
      ["pydoc+s1", "digits", "markov_exact+x", "pydoc+t", "pydoc+r2"],
      ["digits", "pydoc+s1"],
    ],
  },
]


def test_every_shared_teacher_has_one_trainer_that_starts_first():
  cases = [{k: c[k] for k in ("names", "overrides")} for c in _CASES]
  proc = python_child(_CHILD, json.dumps(cases))
  got = [
    json.loads(line.split(" ", 1)[1])
    for line in proc.stdout.splitlines()
    if line.startswith("SCHEDULE ")
  ]
  assert got == [c["want"] for c in _CASES]
