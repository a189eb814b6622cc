"""benchmarks.accelerator in small mode: one table with every row and column, sane numbers."""

import json
import math
import re

import jax

from benchmarks import accelerator


def _first_number(cell: str) -> float:
  m = re.match(r"\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", cell)
  assert m, f"no number in cell {cell!r}"
  return float(m.group(1))


def test_small_mode_writes_complete_table_and_json(tmp_path):
  out = tmp_path / "reports" / "accelerator.md"
  returned = accelerator.run(mode="small", out=str(out), reps=2)
  text = out.read_text()
  data = json.loads((tmp_path / "reports" / "accelerator.json").read_text())
  assert data["columns"] == list(accelerator.COLUMNS) == returned["columns"]

  # The header names the date, jax version, backend and device kind.
  meta = data["meta"]
  assert meta["jax"] == jax.__version__ and meta["backend"] == jax.default_backend()
  for key in ("date", "jax", "backend", "device_kind"):
    assert str(meta[key]) in text

  # One table: a header, a rule, then one line per row, with a cell per workload.
  table = [line for line in text.splitlines() if line.startswith("|")]
  header = [c.strip() for c in table[0].strip("|").split("|")]
  assert header == ["metric", *accelerator.COLUMNS]
  body = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
  assert [row[0] for row in body] == list(accelerator.ROW_LABELS)
  for row in body:
    assert len(row) == 1 + len(accelerator.COLUMNS), row
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
  assert {r["preset"] for r in data["results"].values()} == {"tauldr", "sdtt", "maskgit"}
