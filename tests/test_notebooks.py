"""The colabs/ notebooks: committed without outputs, and run top to bottom.

Each notebook runs in a fresh kernel with MDD_NOTEBOOK_SMALL=1 (every loop
shrunk to a handful of steps), in a temporary working directory and with
HOME there too, so what it writes (data caches, checkpoints, reports) stays
out of the repository and out of ~/.cache.
"""

import os
import pathlib
import sys
import time

import pytest

from tests.conftest import FAST_COMPILE_XLA_FLAGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

COLABS = pathlib.Path(__file__).resolve().parent.parent / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))
CELL_TIMEOUT_S = 240


def test_there_are_notebooks():
  names = {p.name for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "why_mixtures.ipynb", "bring_your_own.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  dirty = [
    i
    for i, c in enumerate(nb.cells)
    if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
  ]
  assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def _kernel_env(tmp_path):
  env = dict(
    os.environ,
    MDD_NOTEBOOK_SMALL="1",
    HOME=str(tmp_path / "home"),
    MPLBACKEND="Agg",
    TF_CPP_MIN_LOG_LEVEL="3",
  )
  # tests/conftest.py fakes 8 host devices for the sharding tests; a notebook
  # sees what a Colab CPU runtime sees: one device. In SMALL mode the time is
  # almost all XLA compilation (a Di4C step is a large program), so compile
  # with fewer optimisations: about 3x faster to compile, slower to run.
  env["XLA_FLAGS"] = FAST_COMPILE_XLA_FLAGS
  # The kernel imports the package under test, wherever pytest found it.
  root = str(COLABS.parent)
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
  return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_small_mode(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  (tmp_path / "home").mkdir()
  client = nbclient.NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(tmp_path)}},
  )
  start = time.time()
  try:
    client.execute(env=_kernel_env(tmp_path))
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name} failed:\n{e}"[:8000])
  print(f"{path.name}: {time.time() - start:.1f} s", file=sys.stderr)
  errors = [
    o
    for c in nb.cells
    if c.cell_type == "code"
    for o in c.get("outputs", [])
    if o.get("output_type") == "error"
  ]
  assert not errors, errors
