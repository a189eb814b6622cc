"""The evaluation report: results.json, results.md and its plots.

`write_report` turns `evaluate.evaluate`'s results dict into results.json,
results.md (the table of every sampler at every N, the step-reduction table
of the student at N against the teacher at N, 2N and 4N, the teacher's
temperature frontier with each student N placed on it), quality_vs_steps.png
and frontier.png. Pure formatting of a finished dict, except
`frontier_comparison`, which builds the dict's "frontier" entry.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mixture_dd import checkpoints, metrics


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
  """Lines of a markdown table: the header, its rule and one line per row of cells."""
  line = lambda cells: "| " + " | ".join(cells) + " |"
  return [line(head), "|" + "---|" * len(head)] + [line(r) for r in rows]


def write_text_and_json(out: str, text: str, payload, indent: int | None = None) -> None:
  """Writes a benchmark's `text` (a markdown table) to `out` and `payload` as JSON beside it
  (same path, extension .json), making the folder."""
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    f.write(text + "\n")
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(payload, f, indent=indent)


def _metric_columns(results: dict) -> list[str]:
  """Scalar metrics in first-seen order: the primary and its SE first, then the
  checks beside it (diversity), timings last."""
  cols = []
  for row in results["rows"]:
    for k, v in row.items():
      if (
        k not in ("sampler", "steps", "teacher_steps")
        and isinstance(v, (int, float))
        and k not in cols
      ):
        cols.append(k)
  timing = [c for c in cols if c.endswith("_s")]
  rest = [c for c in cols if c not in timing]
  primary = results["primary_metric"]
  lead = [primary, f"{primary}_se"] + list(results.get("checks", []))
  rank = {c: i for i, c in enumerate(lead)}
  rest.sort(key=lambda c: rank.get(c, len(lead)))  # stable: the rest keep their order
  return rest + timing


def _fmt(v) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.4g}" if np.isfinite(v) else str(v)
  return str(v)


def write_report(results: dict, out_dir: str) -> None:
  """results.json, results.md (rows = sampler x N) and quality_vs_steps.png."""
  os.makedirs(out_dir, exist_ok=True)
  checkpoints.write_atomic(
    os.path.join(out_dir, "results.json"), json.dumps(results, indent=2, default=str)
  )
  cols = _metric_columns(results)
  ref = results["data_reference"]
  lines = [
    f"# Evaluation on {results['data']} ({results['num_samples']} samples per row, "
    f"seed {results['seed']})",
    "",
  ]
  runs = [f"- {k}: {v}" for k, v in results.get("runs", {}).items() if v]
  lines += runs + [""] if runs else []
  table = [["data", "-"] + [_fmt(ref.get(c)) for c in cols]]
  table += [
    [row["sampler"], str(row["steps"])] + [_fmt(row.get(c)) for c in cols]
    for row in results["rows"]
  ]
  lines += markdown_table(["sampler", "N"] + cols, table)
  lines += step_reduction_table(results)
  lines += frontier_lines(results)
  lat = results["latency"]
  lines += [
    "",
    f"Per-call denoiser latency (batch {lat['batch_size']}, median of {lat['reps']}): "
    + ", ".join(f"{k} = {_fmt(v)}" for k, v in lat.items() if k not in ("batch_size", "reps")),
  ]
  if results.get("hybrid_teacher_steps"):
    lines.append(
      f"hybrid: student for N - {results['hybrid_teacher_steps']} steps, then the teacher."
    )
  for k, v in results.get("extras", {}).items():
    lines.append(f"- {k}: {v}")
  checkpoints.write_atomic(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
  plot_quality(results, os.path.join(out_dir, "quality_vs_steps.png"), cols)
  if results.get("frontier"):
    plot_frontier(results, os.path.join(out_dir, "frontier.png"))


def _with_se(row: dict | None, metric: str) -> str:
  if row is None or metric not in row:
    return ""
  se = row.get(f"{metric}_se")
  return _fmt(row[metric]) + (f" ± {_fmt(se)}" if isinstance(se, float) else "")


def way_to_2n(student: dict | None, at_n: dict | None, at_2n: dict | None, metric: str):
  """(share, standard error) in %: how far the student at N has gone from the teacher at N
  to the teacher at 2N in `metric`, (a - s) / (a - b) with s, a, b the student's, the
  teacher's at N and at 2N (0: the teacher at N; 100: the teacher at 2N; > 100: past it),
  whichever way the metric points. The error is the delta method's over the three rows'
  standard errors (independent samples); None where a row, a value or a gap is missing."""
  rows = (student, at_n, at_2n)
  if any(r is None or metric not in r for r in rows):
    return None
  s, a, b = (float(r[metric]) for r in rows)
  if not np.isfinite([s, a, b]).all() or a == b:
    return None
  share = (a - s) / (a - b)
  ses = [float(r.get(f"{metric}_se") or 0.0) for r in rows]
  grads = [-1.0 / (a - b), (s - b) / (a - b) ** 2, (a - s) / (a - b) ** 2]
  se = float(np.sqrt(sum((g * e) ** 2 for g, e in zip(grads, ses, strict=True))))
  return 100.0 * share, 100.0 * se


def step_reduction_table(results: dict) -> list[str]:
  """Markdown lines: the student at N against the teacher at N, 2N and 4N.

  In the primary metric with its standard error, the first check (the
  diversity column) in brackets, and the student's share of the way from the
  teacher at N to the teacher at 2N (`way_to_2n`; the goal is 100 %); only for
  the N at which the student was evaluated. Empty without a student.
  """
  metric = results["primary_metric"]
  check = (results.get("checks") or [None])[0]
  by = {(r["sampler"], r["steps"]): r for r in results["rows"]}
  ns = sorted(n for (name, n) in by if name == "student")
  if not ns:
    return []
  has_hybrid = any(("hybrid", n) in by for n in ns)
  head = ["N", "student N", "teacher N", "teacher 2N", "teacher 4N", "way to 2N (%)"] + (
    ["hybrid N"] if has_hybrid else []
  )
  ref = results.get("data_reference", {})
  note = ""
  if check is not None:
    note = f"; in brackets: {check}" + (
      f", data {_fmt(ref[check])}" if isinstance(ref.get(check), (int, float)) else ""
    )
  data = f"; data {_with_se(ref, metric)}" if metric in ref else ""
  cell = lambda row: (
    _with_se(row, metric) + (f" [{_fmt(row[check])}]" if row is not None and check in row else "")
  )
  table = []
  for n in ns:
    cells = [str(n), cell(by.get(("student", n)))]
    cells += [cell(by.get(("teacher", k * n))) for k in (1, 2, 4)]
    way = way_to_2n(
      by.get(("student", n)), by.get(("teacher", n)), by.get(("teacher", 2 * n)), metric
    )
    cells.append("" if way is None else f"{way[0]:.0f} ± {way[1]:.0f}")
    if has_hybrid:
      cells.append(cell(by.get(("hybrid", n))))
    table.append(cells)
  return ["", f"Step reduction in {metric} (± standard error{data}{note}):", ""] + markdown_table(
    head, table
  )


def frontier_comparison(rows: list[dict], sweep: list[dict], x: str, y: str) -> dict:
  """Each student N against the teacher's temperature frontier at its diversity.

  The frontier is the teacher's (x, y) over temperatures (e.g. entropy per
  token, gen_ppl), linear in x between its points. A student row is
  "below" when its y (lower is better) is under the frontier's y at its x:
  better quality than the teacher at matched diversity; "outside" when its
  x lies beyond the swept range.
  """
  pts = [(r[x], r[y]) for r in sweep if np.isfinite(r.get(x, np.nan))]
  fx, fy = [p[0] for p in pts], [p[1] for p in pts]
  students = []
  for r in rows:
    if r["sampler"] != "student" or x not in r or y not in r:
      continue
    at = metrics.frontier_value(fx, fy, r[x]) if pts else None
    entry = {"steps": r["steps"], x: r[x], y: r[y], f"{y}_se": r.get(f"{y}_se")}
    entry["frontier"] = at
    entry["position"] = "outside" if at is None else ("below" if r[y] < at else "above")
    students.append(entry)
  return {
    "x": x,
    "y": y,
    "teacher_steps": sweep[0]["steps"] if sweep else None,
    "teacher": [{"temperature": r["temperature"], x: r.get(x), y: r.get(y)} for r in sweep],
    "students": students,
  }


def frontier_lines(results: dict) -> list[str]:
  """Markdown: the teacher's temperature sweep and where each student N lies."""
  front = results.get("frontier")
  if not front:
    return []
  x, y = front["x"], front["y"]
  cols = [c for c in (x, y, results["primary_metric"]) if c] + [f"{y}_se"]
  cols = list(dict.fromkeys(cols))
  out = [
    "",
    f"Teacher at N = {front['teacher_steps']} over temperatures ({y} against {x}; frontier.png):",
    "",
  ]
  sweep = results["temperature_sweep"]
  out += markdown_table(
    ["T"] + cols, [[f"{r['temperature']:g}"] + [_fmt(r.get(c)) for c in cols] for r in sweep]
  )
  out.append("")
  xs = [t[x] for t in front["teacher"]]
  for st in front["students"]:
    head = f"- student N = {st['steps']}: {x} {_fmt(st[x])}, {y} {_with_se(st, y)}"
    if st["position"] == "outside":
      out.append(
        f"{head}: outside the frontier's {x} range [{_fmt(min(xs))}, {_fmt(max(xs))}] "
        "(widen the temperatures)."
      )
    else:
      gap = st[y] - st["frontier"]
      word = "below (better than" if gap < 0 else "above (worse than"
      out.append(
        f"{head}: {word} the teacher at matched {x}), whose {y} there is "
        f"{_fmt(st['frontier'])} (difference {_fmt(gap)})."
      )
  return out


def plot_frontier(results: dict, path: str) -> None:
  """y against x: the teacher's temperature sweep (line), every sampler's rows
  at T = 1 (points labelled by N) and the data."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  front = results["frontier"]
  x, y = front["x"], front["y"]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  sweep = sorted(front["teacher"], key=lambda r: r[x])
  ax.plot(
    [r[x] for r in sweep],
    [r[y] for r in sweep],
    "k-",
    marker="s",
    label=f"teacher N={front['teacher_steps']} over T",
  )
  for r in sweep:
    ax.annotate(
      f"T={r['temperature']:g}", (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points"
    )
  for name in dict.fromkeys(r["sampler"] for r in results["rows"]):
    pts = [r for r in results["rows"] if r["sampler"] == name and x in r and y in r]
    if not pts:
      continue
    line = ax.plot([r[x] for r in pts], [r[y] for r in pts], "o", label=f"{name} (T=1)")
    for r in pts:
      ax.annotate(
        f"N={r['steps']}",
        (r[x], r[y]),
        fontsize=7,
        color=line[0].get_color(),
        xytext=(3, -9),
        textcoords="offset points",
      )
  ref = results["data_reference"]
  if isinstance(ref.get(x), (int, float)) and isinstance(ref.get(y), (int, float)):
    ax.plot([ref[x]], [ref[y]], "k*", ms=10, label="data (test split)")
  ax.set_xlabel(x)
  ax.set_ylabel(y)
  ax.legend(fontsize=7)
  ax.set_title(f"{results['data']}: {y} at matched {x}", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_quality(results: dict, path: str, cols: list[str] | None = None) -> None:
  """One panel per quality metric: x = N (log2), a line per sampler, data dashed."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cols = [
    c for c in (cols or _metric_columns(results)) if not c.endswith("_s") and not c.endswith("_se")
  ]
  fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.4), squeeze=False)
  ref = results["data_reference"]
  for ax, col in zip(axes[0], cols):
    for name in dict.fromkeys(r["sampler"] for r in results["rows"]):
      pts = [(r["steps"], r.get(col)) for r in results["rows"] if r["sampler"] == name]
      pts = [(n, v) for n, v in pts if v is not None and np.isfinite(v)]
      if pts:
        ax.plot(*zip(*pts), marker="o", label=name)
    if isinstance(ref.get(col), (int, float)) and np.isfinite(ref[col]):
      ax.axhline(ref[col], ls="--", color="k", lw=1, label="data")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps N")
    ax.set_title(col)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"{results['data']}: quality against steps", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
