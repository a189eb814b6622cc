"""Benchmark modules the tests import define no absl flags at import.

pytest-xdist runs any two test files in one worker process; two benchmark modules that both
define `--out` at import raise DuplicateFlagError in whichever test imports the second (CI
failed so on another machine's test order). So those modules define their flags under
`__main__` only, and this test holds every one the suite imports to it, in a fresh process.
"""

import glob
import os
import re

from conftest import REPO, python_child

_CHILD = """
import importlib, sys
from absl import flags
for name in sys.argv[1:]:
  importlib.import_module("benchmarks." + name)
  own = flags.FLAGS.flags_by_module_dict().get("benchmarks." + name, [])
  assert not own, f"benchmarks.{name} defines flags at import: {[f.name for f in own]}"
print("IMPORTED", len(sys.argv) - 1)
"""


def _imported_by_tests() -> list[str]:
  names = set()
  for path in glob.glob(os.path.join(REPO, "tests", "*.py")):
    with open(path) as f:
      names.update(re.findall(r"from benchmarks import (\w+)", f.read()))
  return sorted(names)


def test_the_benchmarks_the_tests_import_define_no_flags_at_import():
  names = _imported_by_tests()
  assert {"accelerator", "latent_sampling", "mixture_correlation"} <= set(names), names
  proc = python_child(_CHILD, *names)
  assert f"IMPORTED {len(names)}" in proc.stdout
