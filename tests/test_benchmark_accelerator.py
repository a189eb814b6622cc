"""benchmarks.accelerator in small mode: one table with every row and column, sane numbers.

The program runs end to end on two of its three workloads: pixel (the Gaussian CTMC, tauLDR's
separate distillation times) and MaskGIT (masked, class labels, the confidence teacher step)
cover both processes and both distillation modes, with the chunked Di4C step. The text workload
is the MaskGIT one's code with the SDTT config (whose Di4C step tests/test_configs.py runs);
here it is built (configs, models, shapes), not compiled.
"""

import json
import math
import re

import jax
import pytest

from benchmarks import accelerator

RUN = ("pixel", "maskgit")


def _first_number(cell: str) -> float:
  m = re.match(r"\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", cell)
  assert m, f"no number in cell {cell!r}"
  return float(m.group(1))


def test_small_mode_writes_complete_table_and_json(tmp_path):
  out = tmp_path / "reports" / "accelerator.md"
  returned = accelerator.run(mode="small", out=str(out), reps=1, workloads=RUN)
  text = out.read_text()
  data = json.loads((tmp_path / "reports" / "accelerator.json").read_text())
  columns = [w.title for w in accelerator.WORKLOADS if w.key in RUN]
  assert data["columns"] == columns == returned["columns"]

  # The header names the date, jax version, backend and device kind.
  meta = data["meta"]
  assert meta["jax"] == jax.__version__ and meta["backend"] == jax.default_backend()
  for key in ("date", "jax", "backend", "device_kind"):
    assert str(meta[key]) in text

  # One table: a header, a rule, then one line per row, with a cell per workload.
  table = [line for line in text.splitlines() if line.startswith("|")]
  header = [c.strip() for c in table[0].strip("|").split("|")]
  assert header == ["metric", *columns]
  body = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
  assert [row[0] for row in body] == list(accelerator.ROW_LABELS)
  for row in body:
    assert len(row) == 1 + len(columns), row
    if row[0] == "peak device memory so far (GiB)" and jax.default_backend() == "cpu":
      continue  # the CPU backend keeps no memory_stats: "n/a"
    if row[0].startswith(("tokens", "model:")):
      continue  # descriptions
    for cell in row[1:]:
      v = _first_number(cell)
      assert math.isfinite(v) and v > 0, (row[0], cell)

  for key, r in data["results"].items():
    assert r["errors"] == [], (key, r["errors"])
    for k in accelerator.NUMERIC_KEYS:
      v = r[k]
      assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (key, k, v)
    for k in accelerator.MFU_KEYS:
      assert 0 < r[k] < 1.5, (key, k, r[k])
    for prefix in ("teacher", "distill"):
      assert r[f"{prefix}_flops_source"] in ("XLA lowered", "XLA compiled", "analytic")
      # The counted FLOPs are at least the analytic matmul FLOPs (which leave out
      # elementwise work), and of the same order.
      ratio = r[f"{prefix}_flops"] / r[f"{prefix}_flops_analytic"]
      assert 0.5 < ratio < 20, (key, prefix, ratio)
    assert r["student_passes_per_s"] == r["distill_batch"] * r["num_latents"] / r["distill_step_s"]
    assert r["latent_chunks"] > 1  # the chunked (lax.map) Di4C path ran
  assert {r["process"] for r in data["results"].values()} == {"gaussian", "masked"}
  assert {r["preset"] for r in data["results"].values()} == {"tauldr", "maskgit"}
  assert {r["distill_mode"] for r in data["results"].values()} == {"separate", "same"}


@pytest.mark.parametrize("key", accelerator.WORKLOAD_KEYS)
def test_every_workload_builds_in_both_modes(key):
  """Each workload's configs make a teacher and a student whose parameter shapes fit
  (`jax.eval_shape`, nothing compiled), at the small and the full sizes."""
  w = next(w for w in accelerator.WORKLOADS if w.key == key)
  for mode in accelerator.MODES:
    s = accelerator.build(w, mode)
    assert s.spec.length == (w.length if mode == "full" else w.small_length)
    assert s.student_model.latent and not s.teacher_model.latent
    teacher = jax.tree.leaves(s.abstract["teacher"])
    assert teacher and len(jax.tree.leaves(s.abstract["student"])) > len(teacher)
