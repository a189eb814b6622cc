r"""Where a local Markov student's pair errors lie: inside its blocks, or across their boundaries.

A student with local latents (model.latent_scope "blocks") is a product over its blocks of one
mixture per block, so within one sampler step the pairs (x_d, x_{d+k}) that straddle a block
boundary are drawn independently, as its product teacher draws every pair. This splits the
primary metric, pair_tv (the chain's exact pair laws, lags 1..3), into its pairs inside a
contiguous block and those that straddle two (pooled over lags and positions, ± bootstrap SE
over samples), for the student at each N and its teacher at N, 2N, 4N. A student whose
straddling pairs match the teacher at N gains nothing there; model.latent_shift "random"
(blocks rotated between steps) is the lever aimed at them.

  python -m benchmarks.block_boundaries --student_workdir=workdirs/markov_exact_local/student \
      --out=reports/block_boundaries.md
"""

import time

import numpy as np
from absl import app, flags

from mixture_dd import metrics, reports, runs, scorers
from mixture_dd.data import markov


def _define_flags():
  """Only when run as a script (see tests/test_benchmark_imports.py)."""
  flags.DEFINE_string("student_workdir", None, "A Markov Di4C student run.", required=True)
  flags.DEFINE_string("out", "reports/block_boundaries.md", "Table (.md; .json beside).")
  flags.DEFINE_list("steps", ["1", "2", "4", "8"], "The student's N (the teacher: N, 2N, 4N).")
  flags.DEFINE_integer("num_samples", 2048, "Samples per sampler and N.")
  flags.DEFINE_integer("block", 0, "Block size (0: the student's own, D / latent_dim).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def straddles(length: int, block: int, lag: int) -> np.ndarray:
  """bool `[D - lag]`: whether (d, d + lag) lie in two contiguous blocks of `block` positions."""
  d = np.arange(length - lag)
  return d // block != (d + lag) // block


def split(tokens: np.ndarray, laws: dict, block: int, weights=None) -> tuple[float, float]:
  """(inside, straddling): pair_tv over the pairs inside a block and over those across a
  boundary: for each lag the mean over its pairs on that side, then the mean over lags, as
  `metrics.pair_tv` (so a sampler that treats every pair alike scores the same on both
  sides, whatever share of each lag's pairs a side holds)."""
  tvs = metrics.pair_tvs(tokens, laws, weights)
  length = tokens.shape[1]
  sides = ([], [])
  for k, tv in tvs.items():
    cross = straddles(length, block, k)
    if cross.all() or not cross.any():
      raise ValueError(
        f"blocks of {block} of {length} positions leave no lag-{k} pair on one side: choose "
        f"a block between {max(tvs) + 1} and {length // 2}"
      )
    sides[0].append(tv[~cross].mean())
    sides[1].append(tv[cross].mean())
  return float(np.mean(sides[0])), float(np.mean(sides[1]))


def measure(tokens: np.ndarray, laws: dict, block: int) -> dict:
  """One row: inside and straddling pair TV, each ± bootstrap SE, and pair_tv itself."""
  row = dict(zip(("inside", "straddling"), split(tokens, laws, block)))
  for i, name in enumerate(("inside", "straddling")):
    row[name + "_se"] = metrics.bootstrap_se_weighted(
      lambda w, i=i: split(tokens, laws, block, w)[i], len(tokens), scorers.BOOTSTRAP
    )
  row["pair_tv"] = metrics.pair_tv(tokens, laws)
  return row


def student_block(run: runs.Run) -> int:
  """D / latent_dim for local latents; a global student has no blocks of its own."""
  if run.model.latent_scope != "blocks":
    raise ValueError(
      f"{run.workdir} has a global latent (no blocks of its own): pass --block=SIZE to split "
      "its pairs by blocks of SIZE anyway"
    )
  return run.spec.length // run.model.latent_dim


def main(argv):
  del argv
  fl = flags.FLAGS
  student = runs.load_run(fl.student_workdir)
  if not student.is_student or student.config.data.name != "markov":
    raise ValueError(f"{fl.student_workdir}: need a Di4C student of the markov data set")
  teacher = runs.teacher_run(student)
  block = fl.block or student_block(student)
  cfg = student.config.data
  init, trans = markov.make_chain(cfg.vocab_size, cfg.seed)  # as builders.Markov does
  laws = scorers.markov_pair_laws(init, trans, student.spec.length)
  steps = sorted({int(n) for n in fl.steps})
  plan = [("student", student, n) for n in steps]
  plan += [("teacher", teacher, n) for n in sorted({m * n for n in steps for m in (1, 2, 4)})]
  rows, t0 = [], time.time()
  for i, (name, run, n) in enumerate(plan):
    tokens = np.asarray(runs.sample(run, fl.num_samples, n, seed=fl.seed))
    rows.append(dict(sampler=name, N=n, **measure(tokens, laws, block)))
    eta = (time.time() - t0) / (i + 1) * (len(plan) - i - 1)
    print(f"[{i + 1}/{len(plan)}] {rows[-1]} (ETA {eta:.0f} s)", flush=True)
  fmt = lambda r, k: f"{r[k]:.4f} ± {r[k + '_se']:.4f}"
  body = [
    [r["sampler"], str(r["N"]), fmt(r, "inside"), fmt(r, "straddling"), f"{r['pair_tv']:.4f}"]
    for r in rows
  ]
  lines = [
    f"Pair TV (lags {sorted(laws)}) of `{fl.student_workdir}` (step {student.step}) and its "
    f"teacher, split by blocks of {block} positions, {fl.num_samples} samples per row, seed "
    f"{fl.seed}, ± bootstrap SE:",
    "",
    *reports.markdown_table(["sampler", "N", "inside a block", "straddling", "pair_tv"], body),
  ]
  text = "\n".join(lines)
  print(text)
  reports.write_text_and_json(
    fl.out, text, dict(student=fl.student_workdir, step=student.step, block=block, rows=rows)
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
