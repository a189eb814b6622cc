"""Evaluation of teacher, student and hybrid samplers against the number of steps.

  teacher = runs.load_run("workdirs/tiny_teacher")
  student = runs.load_run("workdirs/tiny_student")
  results = evaluate(teacher, student, steps=[1, 2, 4, 8], num_samples=1000, seed=0,
                     out_dir="reports/tiny_eval", hybrid_teacher_steps=1)

For every sampler ("teacher", "student", "hybrid": the student for the first
N - M steps then the teacher for the last M) and every N, samples are drawn
in fixed-size batches (one compiled program per sampler and N) and scored
by the data set's scorer (`scorers`: exact laws on tiny, pair TV on markov,
FD on digits, n-gram JS on pydoc_text, each with its diversity checks);
optionally the teacher is also swept over temperature, a frontier of
quality against diversity on which every student N is placed
(`teacher_temperatures`).

Every data set also gets the per-call latency of each denoiser (median of
repetitions, same machine, same run) and the wall time of sampling per N.
Writes results.json, results.md and quality_vs_steps.png (and frontier.png
with a temperature sweep) under out_dir (`reports`), with the samples
(PNGs or text, and every token) under out_dir/samples.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import reports, samplers, scorers, visualize

log = logging.getLogger("mixture_dd")

NUM_PICTURES = 64  # samples per PNG grid / text file


# ---------------------------------------------------------------------------
# Samplers.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """One way of sampling: `samplers.sample` arguments besides key and sizes.

  The denoiser functions are created once here and reused, because
  `samplers.sample` treats them as static (a new function object would
  recompile the whole sampler).
  """

  name: str
  denoiser: Callable
  params: Any
  second: Callable | None = None
  second_params: Any = None
  second_steps: int = 0  # steps run by `second` at the end (the hybrid's M)

  def num_first(self, num_steps: int) -> int | None:
    return None if self.second is None else num_steps - self.second_steps

  def applies(self, num_steps: int) -> bool:
    """A hybrid needs at least one student step, else it is the teacher."""
    return self.second is None or num_steps > self.second_steps


def sampler_specs(teacher, student=None, hybrid_teacher_steps: int = 0) -> dict[str, SamplerSpec]:
  """{"teacher", ["student", ["hybrid"]]} sampler specs of loaded runs."""
  t_den = teacher.denoiser()
  specs = {"teacher": SamplerSpec("teacher", t_den, teacher.params)}
  if student is not None:
    s_den = student.denoiser()
    specs["student"] = SamplerSpec("student", s_den, student.params)
    if hybrid_teacher_steps > 0:
      specs["hybrid"] = SamplerSpec(
        "hybrid", s_den, student.params, t_den, teacher.params, hybrid_teacher_steps
      )
  elif hybrid_teacher_steps > 0:
    raise ValueError("hybrid_teacher_steps > 0 needs a student run")
  return specs


def draw_samples(
  spec: SamplerSpec,
  process,
  length: int,
  num_steps: int,
  num_samples: int,
  batch_size: int,
  seed: int,
  cache: dict | None = None,
  temperature: float | None = None,
) -> tuple[np.ndarray, float, float]:
  """`num_samples` samples `[num_samples, length]` int32 in fixed-size batches.

  Compiles once per sampler and batch size (the number of steps and the
  temperature are traced arguments; pass the same `cache` dict to reuse the
  program across N and T), ahead of time so that the timing excludes
  compilation, and pads the last batch to the same size. Returns (tokens,
  sampling seconds, compile seconds). Batch b uses key
  fold_in(fold_in(key(seed), N), b), so all samplers at the same N share
  their random streams. `temperature` None: the untempered sampler.
  """
  cache = {} if cache is None else cache
  base = jax.random.fold_in(jax.random.key(seed), num_steps)
  n = jnp.asarray(num_steps, jnp.int32)
  second_steps = jnp.asarray(spec.second_steps, jnp.int32)
  temp = None if temperature is None else jnp.asarray(temperature, jnp.float32)
  program = (spec.name, batch_size, temp is not None)
  start = time.perf_counter()
  if program not in cache:
    lowered = samplers.sample.lower(
      base,
      process,
      spec.denoiser,
      spec.params,
      batch_size=batch_size,
      length=length,
      num_steps=n,
      second=spec.second,
      second_params=spec.second_params,
      second_steps=second_steps,
      temperature=temp,
    )
    cache[program] = lowered.compile()
  compiled = cache[program]
  compile_s = time.perf_counter() - start
  out = []
  start = time.perf_counter()
  for b in range(math.ceil(num_samples / batch_size)):
    key = jax.random.fold_in(base, b)
    out.append(
      np.asarray(
        compiled(
          key,
          spec.params,
          num_steps=n,
          second_params=spec.second_params,
          second_steps=second_steps,
          temperature=temp,
        )
      )
    )
  sample_s = time.perf_counter() - start
  return np.concatenate(out)[:num_samples].astype(np.int32), sample_s, compile_s


def latency(run, batch_size: int, reps: int = 10, warmup: int = 2) -> float:
  """Median wall seconds of one jitted denoiser call on a `[batch_size, D]` batch.

  The input is a prior draw at t = 1 (a fully masked batch for the masked
  process); the network's cost does not depend on the values.
  """
  den = jax.jit(run.denoiser())
  key = jax.random.key(0)
  x = run.process.prior_sample(key, (batch_size, run.spec.length))
  t = jnp.ones((batch_size,), jnp.float32)
  times = []
  for i in range(warmup + reps):
    start = time.perf_counter()
    jax.block_until_ready(den(run.params, x, t, jax.random.fold_in(key, i)))
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return float(np.median(times))


# ---------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------


def _check_compatible(teacher, student) -> None:
  if student is None:
    return
  if teacher.is_student:
    log.warning("the 'teacher' run is itself a mixture student (di4c^2)")
  if not student.is_student:
    raise ValueError("student run is a product teacher run (no is_student in its config.json)")
  if teacher.spec != student.spec:
    raise ValueError(f"teacher and student data differ: {teacher.spec} vs {student.spec}")
  if teacher.config.process.to_dict() != student.config.process.to_dict():
    raise ValueError(
      f"teacher and student processes differ: {teacher.config.process} vs {student.config.process}"
    )


def evaluate(
  teacher,
  student,
  steps: list[int],
  num_samples: int,
  seed: int,
  out_dir: str,
  hybrid_teacher_steps: int = 0,
  reference_dir: str | None = None,
  *,
  batch_size: int = 256,
  num_latent_nodes: int = 32,
  latency_reps: int = 10,
  student_steps: list[int] | None = None,
  teacher_temperatures: Sequence[float] = (),
  temperature_steps: int | None = None,
) -> dict:
  """Samples and scores teacher / student / hybrid at every N in `steps`.

  Args:
    teacher, student: `runs.Run`s (student may be None).
    steps: numbers of sampling steps N.
    num_samples: samples per (sampler, N).
    seed: sampling seed (the same streams for every sampler at one N).
    out_dir: results.json, results.md, quality_vs_steps.png, samples/.
    hybrid_teacher_steps: M > 0 adds "hybrid": the student for N - M steps,
      then the teacher for the last M (only at N > M).
    reference_dir: where the digits classifier / char LM is cached.
    batch_size: sampling batch (one compiled program per sampler and N).
    num_latent_nodes: Gauss-Legendre nodes over lambda (tiny, exact).
    latency_reps: repetitions of the timed denoiser call.
    student_steps: the N at which the student (and hybrid) are sampled
      (default: `steps`); e.g. 1..8 with the teacher at 1..32 gives the
      student at N against the teacher at N, 2N and 4N.
    teacher_temperatures: temperatures T at which the teacher is also
      sampled (x0 drawn from softmax(logits / T)) at N = temperature_steps
      (default: the largest of `steps`): its quality-against-diversity
      frontier (text: gen_ppl against entropy per token), with every
      student N placed on it (results["frontier"], frontier.png). T = 1 at
      a teacher N already sampled reuses that row.

  Returns:
    The results dict written to results.json.
  """
  if not steps or min(steps) < 1:
    raise ValueError(f"steps must be positive integers, got {steps}")
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2, got {num_samples}")
  if any(not (np.isfinite(t) and t > 0) for t in teacher_temperatures):
    raise ValueError(f"teacher_temperatures must be positive, got {list(teacher_temperatures)}")
  if temperature_steps is not None and temperature_steps < 1:
    raise ValueError(f"temperature_steps must be a positive integer, got {temperature_steps}")
  _check_compatible(teacher, student)
  spec, process = teacher.spec, teacher.process
  specs = sampler_specs(teacher, student, hybrid_teacher_steps)
  batch_size = min(batch_size, num_samples)
  os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)

  score, data_ref, extras = scorers.make_scorer(
    teacher, student, specs, reference_dir, num_latent_nodes, num_samples
  )
  extras = dict(extras)
  checks = list(extras.pop("checks", []))
  frontier_axes = extras.pop("frontier", None)
  if teacher_temperatures and frontier_axes is None:
    raise ValueError(
      f"the {spec.name} scorer defines no quality-against-diversity frontier (its scores may "
      "not follow the samples, e.g. exact laws); drop teacher_temperatures for this data set."
    )
  lat = {
    "batch_size": batch_size,
    "reps": latency_reps,
    "teacher_s": latency(teacher, batch_size, latency_reps),
  }
  if student is not None:
    lat["student_s"] = latency(student, batch_size, latency_reps)
    lat["ratio_student_over_teacher"] = lat["student_s"] / lat["teacher_s"]
  log.info(
    "per-call latency (batch %d): %s",
    batch_size,
    ", ".join(f"{k}={v:.4g}" for k, v in lat.items() if isinstance(v, float)),
  )

  rows, kept, cache = [], {}, {}
  student_steps = steps if student_steps is None else student_steps
  todo = [
    (name, n)
    for n in sorted(set(steps) | set(student_steps))
    for name in specs
    if specs[name].applies(n) and n in (steps if name == "teacher" else student_steps)
  ]
  for i, (name, n) in enumerate(todo):
    tokens, sample_s, compile_s = draw_samples(
      specs[name], process, spec.length, n, num_samples, batch_size, seed, cache
    )
    row = {"sampler": name, "steps": n, "sample_time_s": sample_s, "compile_s": compile_s}
    if name == "hybrid":
      row["teacher_steps"] = hybrid_teacher_steps
    row.update(score(name, n, tokens))
    rows.append(row)
    kept[(name, n)] = tokens
    _save_samples(tokens, spec, out_dir, f"{name}_N{n}")
    log.info("[%d/%d] %s N=%d: %s", i + 1, len(todo), name, n, _short(row))
  if spec.kind == "image" and spec.image_shape is not None:
    _save_panels(
      specs,
      kept,
      student_steps if student is not None else steps,
      spec,
      process,
      out_dir,
      seed,
      cache,
    )

  sweep = []
  if teacher_temperatures:
    t_n = temperature_steps or max(steps)
    for temp in sorted(set(float(t) for t in teacher_temperatures)):
      if temp == 1.0 and ("teacher", t_n) in kept:
        row = dict(next(r for r in rows if (r["sampler"], r["steps"]) == ("teacher", t_n)))
      else:
        tokens, sample_s, compile_s = draw_samples(
          specs["teacher"], process, spec.length, t_n, num_samples, batch_size, seed, cache, temp
        )
        row = {"sampler": "teacher", "steps": t_n, "sample_time_s": sample_s}
        row["compile_s"] = compile_s
        row.update(score("teacher", t_n, tokens))
        _save_samples(tokens, spec, out_dir, f"teacher_N{t_n}_T{temp:g}")
      row["temperature"] = temp
      sweep.append(row)
      log.info("[sweep] teacher N=%d T=%g: %s", t_n, temp, _short(row))

  results = {
    "data": spec.name,
    "data_config": teacher.config.data.to_dict(),
    "process": teacher.config.process.to_dict(),
    "steps": sorted(set(steps) | set(student_steps)),
    "num_samples": num_samples,
    "seed": seed,
    "hybrid_teacher_steps": hybrid_teacher_steps,
    "primary_metric": scorers.get(spec.name).primary_metric,
    "checks": checks,
    "latency": lat,
    "data_reference": data_ref,
    "extras": extras,
    "rows": rows,
    "device": str(jax.devices()[0].platform),
    "runs": {"teacher": _describe(teacher), "student": _describe(student)},
  }
  if sweep:
    results["temperature_sweep"] = sweep
    results["frontier"] = reports.frontier_comparison(rows, sweep, *frontier_axes)
  reports.write_report(results, out_dir)
  return results


def _describe(run) -> str | None:
  """The run and checkpoint step a report's numbers come from."""
  return None if run is None else run.describe()


def _short(row: dict) -> str:
  return ", ".join(
    f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k not in ("compile_s",)
  )


def _save_samples(tokens, spec, out_dir, tag):
  prefix = os.path.join(out_dir, "samples", tag)
  visualize.save_samples(tokens[:NUM_PICTURES], spec, prefix, title=tag)
  # save_samples keeps the first NUM_PICTURES; the full set goes next to them.
  np.savez_compressed(prefix + "_all.npz", tokens=tokens)


def _save_panels(specs, kept, steps, spec, process, out_dir, seed, cache):
  """PNG per N: teacher N | student N | teacher 4N, the same number of samples."""
  for n in steps:
    panels = [
      (f"{name} N={n}", kept[(name, n)][:NUM_PICTURES])
      for name in ("teacher", "student", "hybrid")
      if (name, n) in kept
    ]
    if (("teacher", 4 * n)) in kept:
      far = kept[("teacher", 4 * n)]
    else:
      far, _, _ = draw_samples(
        specs["teacher"], process, spec.length, 4 * n, NUM_PICTURES, NUM_PICTURES, seed, cache
      )
    panels.append((f"teacher N={4 * n}", far[:NUM_PICTURES]))
    visualize.save_panels(panels, spec, os.path.join(out_dir, f"panels_N{n}.png"))
