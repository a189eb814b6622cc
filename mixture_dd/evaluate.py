"""Evaluation of teacher, student and hybrid samplers against the number of steps.

  teacher = runs.load_run("workdirs/tiny_teacher")
  student = runs.load_run("workdirs/tiny_student")
  results = evaluate(teacher, student, steps=[1, 2, 4, 8], num_samples=1000, seed=0,
                     out_dir="reports/tiny_eval", hybrid_teacher_steps=1)

For every sampler ("teacher", "student", "hybrid": the student for the first
N - M steps then the teacher for the last M) and every N, samples are drawn
in fixed-size batches (one compiled program per sampler and N) and scored
with the metrics of the data kind:

  * tiny: the EXACT law of the sampler (`exact.sampler_distribution`, the
    student's lambda integrated with Gauss-Legendre nodes), its TV and KL
    against the true family; the samples give an empirical TV cross-check;
  * markov: oracle NLL per token under the true chain and per-sample
    entropy, next to the test split's values and the exact entropy rate;
  * digits: Frechet distance on a reference classifier's features (against
    the train split; the test split's FD is the floor), the classifier's
    label histogram and its KL from uniform, PNG panels;
  * pydoc_text: generative perplexity under a reference character LM,
    unigram entropy, self-BLEU, samples as text.

Every data set also gets the per-call latency of each denoiser (median of
repetitions, same machine, same run) and the wall time of sampling per N.
Writes results.json, results.md and quality_vs_steps.png under out_dir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import denoisers, exact, metrics, reference_models, samplers, trainer, visualize
from mixture_dd.data import builders, markov, pipeline, registry

log = logging.getLogger("mixture_dd")

DEFAULT_REFERENCE_ROOT = os.path.join("~", ".cache", "mixture_dd", "reference")
# Metric each data set is ranked by (the first panel of the plot): a live
# read-only view of the registry's primary_metric fields.
PRIMARY = registry.PRIMARY_METRICS
NUM_PICTURES = 64  # samples per PNG grid / text file
SELF_BLEU_SUBSET = 100


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
) -> tuple[np.ndarray, float, float]:
  """`num_samples` samples `[num_samples, length]` int32 in fixed-size batches.

  Compiles once per sampler and batch size (the number of steps is a traced
  argument; pass the same `cache` dict to reuse the program across N), ahead
  of time so that the timing excludes compilation, and pads the last batch
  to the same size. Returns (tokens, sampling seconds, compile seconds).
  Batch b uses key fold_in(fold_in(key(seed), N), b), so all samplers at the
  same N share their random streams.
  """
  cache = {} if cache is None else cache
  base = jax.random.fold_in(jax.random.key(seed), num_steps)
  n = jnp.asarray(num_steps, jnp.int32)
  first = jnp.asarray(spec.num_first(num_steps) or 0, jnp.int32)
  start = time.perf_counter()
  if (spec.name, batch_size) not in cache:
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
      num_first=first,
    )
    cache[(spec.name, batch_size)] = lowered.compile()
  compiled = cache[(spec.name, batch_size)]
  compile_s = time.perf_counter() - start
  out = []
  start = time.perf_counter()
  for b in range(math.ceil(num_samples / batch_size)):
    key = jax.random.fold_in(base, b)
    out.append(
      np.asarray(
        compiled(key, spec.params, num_steps=n, second_params=spec.second_params, num_first=first)
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
# tiny: exact laws.
# ---------------------------------------------------------------------------


def exact_view(run) -> Callable:
  """A run's `fn(x [n, D], t, lam) -> [n, D, S]` for `exact.sampler_distribution`,
  padded to all S**D states so that it compiles once."""
  return denoisers.exact_view(
    denoisers.from_network(run.model), run.params, run.process.num_states**run.spec.length
  )


def exact_law(
  process,
  length: int,
  num_steps: int,
  first,
  second=None,
  num_first: int | None = None,
  num_latent_nodes: int = 32,
  final: str = "argmax",
) -> np.ndarray:
  """Exact law `[S**D]` of `samplers.sample` on the uniform grid.

  first, second: (fn(x, t, lam), is_mixture) as for
  `exact.sampler_distribution`; with `second`, steps num_first.. (and the
  final denoise, if any step is the second's) use it, as in
  `samplers.sample`.
  """
  times, _ = samplers.schedule(process, num_steps)
  fn, is_mix = first
  if second is not None:
    # Step i runs from times[i]; steps i >= num_first belong to `second`.
    boundary = times[min(num_first, len(times) - 1)]
    fn2, mix2 = second
    use_second = lambda t: num_first < num_steps and t <= boundary
    fn = lambda x, t, lam, f1=first[0]: fn2(x, t, lam) if use_second(t) else f1(x, t, lam)
    is_mix = is_mix or mix2
  law, leftover = exact.sampler_distribution(
    process, fn, length, times, final=final, num_latent_nodes=num_latent_nodes if is_mix else None
  )
  if leftover > 1e-6:
    raise ValueError(f"{leftover:.3g} of the mass ended on non-data states")
  return law


def empirical_law(tokens: np.ndarray, num_values: int) -> np.ndarray:
  """Frequencies `[S**D]` of samples `[n, D]` over `exact.enumerate_states`."""
  idx = exact.state_index(tokens, num_values)
  return np.bincount(idx, minlength=num_values ** tokens.shape[1]) / len(tokens)


def tiny_metrics(
  probs: np.ndarray, law: np.ndarray, tokens: np.ndarray | None, num_values: int
) -> dict:
  """TV, KL(data || sampler), KL(sampler || data) of an exact law; empirical TV."""
  out = {
    "tv": exact.total_variation(probs, law),
    "kl": exact.kl_divergence(probs, law),
    "kl_reverse": exact.kl_divergence(law, probs),
  }
  if tokens is not None:
    out["tv_empirical"] = exact.total_variation(probs, empirical_law(tokens, num_values))
  return out


# ---------------------------------------------------------------------------
# markov, digits, text.
# ---------------------------------------------------------------------------


def markov_metrics(tokens: np.ndarray, init: np.ndarray, trans: np.ndarray) -> dict:
  """Oracle NLL per token (mean, standard error over sequences) and entropy."""
  nll = -markov.log_prob(tokens, init, trans) / tokens.shape[1]  # [n]
  return {
    "nll_per_token": float(nll.mean()),
    "nll_per_token_se": float(nll.std(ddof=1) / np.sqrt(len(nll)))
    if len(nll) > 1
    else float("nan"),
    "entropy_per_token": metrics.sample_entropy_per_token(tokens),
  }


CONFIDENT = 0.9  # a sample is "recognised" if the classifier gives its label p > this
BOOTSTRAP = 100  # resamples for the standard errors of FD


def digits_metrics(tokens: np.ndarray, clf_params, levels: int, ref_features: np.ndarray) -> dict:
  """FD against reference features (with bootstrap SE over samples), the
  fraction the classifier recognises with probability > 0.9 (with binomial
  SE), predicted-label histogram and its KL from uniform."""
  feats = np.asarray(reference_models.classifier_features(clf_params, tokens, levels))
  probs = np.asarray(jax.nn.softmax(reference_models.classifier_logits(clf_params, tokens, levels)))
  hist = metrics.histogram(probs.argmax(-1), 10)
  fd = lambda f: metrics.frechet_distance_from_features(f, ref_features)
  conf = float(np.mean(probs.max(-1) > CONFIDENT))
  return {
    "fd": fd(feats),
    "fd_se": metrics.bootstrap_se(fd, feats, BOOTSTRAP),
    "recognised": conf,
    "recognised_se": float(np.sqrt(conf * (1 - conf) / len(feats))),
    "label_kl_uniform": metrics.kl_from_uniform(hist),
    "label_hist": [round(float(h), 4) for h in hist],
  }


def text_metrics(tokens: np.ndarray, lm_params, vocab_size: int) -> dict:
  """Generative perplexity (with bootstrap SE over samples), unigram entropies
  and self-BLEU (first 100 samples)."""
  length = tokens.shape[1]
  ll = reference_models.log_likelihood(lm_params, tokens)  # [n] nats per sequence
  ppl = lambda v: float(np.exp(-np.mean(v) / length))
  out = {
    "gen_ppl": ppl(ll),
    "gen_ppl_se": metrics.bootstrap_se(ppl, ll, BOOTSTRAP),
    "unigram_entropy": metrics.unigram_entropy(tokens, vocab_size),
    "entropy_per_token": metrics.sample_entropy_per_token(tokens),
  }
  if len(tokens) >= 2:
    out["self_bleu"] = metrics.self_bleu(tokens[:SELF_BLEU_SUBSET])
  return out


def _default_reference_dir(spec, data_config) -> str:
  """Cache directory of a reference model: one per (data set, what it was trained on)."""
  del data_config  # The spec holds everything the reference model depends on.
  if spec.name == "digits":
    name = f"digits_L{spec.vocab_size}"
  elif spec.name == "pydoc_text":
    # The text changes between CPython releases, and so must the model.
    name = f"pydoc_text_D{spec.length}_src{builders.pydoc_fingerprint()}"
  else:  # A data set added later: its name, length and vocabulary.
    name = f"{spec.name}_D{spec.length}_V{spec.vocab_size}"
  return os.path.expanduser(os.path.join(DEFAULT_REFERENCE_ROOT, name))


def digits_classifier(reference_dir: str, train, test, levels: int):
  """(params, meta): loaded from reference_dir, or trained on train and saved."""
  if os.path.isdir(os.path.join(reference_dir, "params")):
    log.info("loading the digits classifier from %s", reference_dir)
    return reference_models.load_classifier(reference_dir)
  log.info("training the digits classifier (cached in %s)", reference_dir)
  params, meta = reference_models.train_digits_classifier(
    train.tokens, train.labels, levels, eval_images=test.tokens, eval_labels=test.labels
  )
  reference_models.save_classifier(reference_dir, params, meta)
  return params, meta


def char_lm(reference_dir: str, train, test, vocab_size: int, steps: int = 1000):
  """(params, meta): the reference CharLM, loaded or trained on the train split."""
  if os.path.isdir(os.path.join(reference_dir, "params")):
    log.info("loading the reference char LM from %s", reference_dir)
    return reference_models.load_char_lm(reference_dir)
  log.info("training the reference char LM (%d steps, cached in %s)", steps, reference_dir)
  params = reference_models.train_char_lm(train.tokens, vocab_size, steps=steps)
  meta = {
    "steps": steps,
    "vocab_size": vocab_size,
    "length": int(train.tokens.shape[1]),
    "test_ppl": reference_models.generative_perplexity(params, test.tokens),
  }
  reference_models.save_char_lm(reference_dir, params, meta)
  return params, meta


# ---------------------------------------------------------------------------
# The metric of a data set, as one object. Each *_scorer is named by its
# data set's registry entry (mixture_dd.data.registry) and has the signature
# (teacher, student, specs, reference_dir, num_latent_nodes)
#   -> (score(sampler, N, tokens [n, D]) -> dict, data reference dict, extras dict).
# ---------------------------------------------------------------------------


def tiny_scorer(teacher, student, specs, reference_dir, num_latent_nodes):
  """Exact laws of every sampler against the true family (TV, both KLs)."""
  del reference_dir  # The family is known exactly: nothing to train.
  spec, cfg = teacher.spec, teacher.config.data
  probs = exact.make_family(cfg.family, spec.vocab_size, spec.length, cfg.seed)
  _, test = pipeline.load(cfg, "test")
  fns = {"teacher": (exact_view(teacher), False)}
  student_fn = None
  if student is not None:
    student_fn = (exact_view(student), True)
    fns["student"] = student_fn

  def score(sampler, n, tokens):
    s = specs[sampler]
    if sampler == "hybrid":
      law = exact_law(
        teacher.process,
        spec.length,
        n,
        student_fn,
        fns["teacher"],
        s.num_first(n),
        num_latent_nodes,
      )
    else:
      law = exact_law(
        teacher.process, spec.length, n, fns[sampler], num_latent_nodes=num_latent_nodes
      )
    return tiny_metrics(probs, law, tokens, spec.vocab_size)

  ref = {
    "tv": 0.0,
    "kl": 0.0,
    "kl_reverse": 0.0,
    "tv_empirical": exact.total_variation(probs, empirical_law(test.tokens, spec.vocab_size)),
  }
  return score, ref, {"family": cfg.family, "num_test": len(test)}


def markov_scorer(teacher, student, specs, reference_dir, num_latent_nodes):
  """Oracle NLL per token under the true chain, and per-sample entropy."""
  del student, specs, reference_dir, num_latent_nodes  # Samples alone are scored.
  spec, cfg = teacher.spec, teacher.config.data
  init, trans = markov.make_chain(cfg.vocab_size, cfg.seed)  # as builders.Markov does
  _, test = pipeline.load(cfg, "test")
  ref = markov_metrics(test.tokens.astype(np.int64), init, trans)
  extras = {"entropy_rate": markov.entropy_rate(init, trans, spec.length), "num_test": len(test)}
  return (lambda s, n, x: markov_metrics(x, init, trans)), ref, extras


def digits_scorer(teacher, student, specs, reference_dir, num_latent_nodes):
  """FD on a reference classifier's features against the train split."""
  del student, specs, num_latent_nodes
  spec, cfg = teacher.spec, teacher.config.data
  _, train_src = pipeline.load(cfg, "train")
  _, test = pipeline.load(cfg, "test")
  rdir = reference_dir or _default_reference_dir(spec, cfg)
  clf, meta = digits_classifier(rdir, train_src, test, spec.vocab_size)
  train_feats = reference_models.classifier_features(clf, train_src.tokens, spec.vocab_size)
  ref = digits_metrics(test.tokens, clf, spec.vocab_size, train_feats)
  extras = {
    "classifier": meta,
    "reference_dir": rdir,
    "num_test": len(test),
    "note": "fd is against the train split; the data row is the test split's fd",
  }
  return (lambda s, n, x: digits_metrics(x, clf, spec.vocab_size, train_feats)), ref, extras


def text_scorer(teacher, student, specs, reference_dir, num_latent_nodes):
  """Generative perplexity under a reference char LM trained on the train split."""
  del student, specs, num_latent_nodes
  spec, cfg = teacher.spec, teacher.config.data
  _, train_src = pipeline.load(cfg, "train")
  _, test = pipeline.load(cfg, "test")
  rdir = reference_dir or _default_reference_dir(spec, cfg)
  lm, meta = char_lm(rdir, train_src, test, spec.vocab_size)
  ref = text_metrics(test.tokens.astype(np.int64), lm, spec.vocab_size)
  extras = {"char_lm": meta, "reference_dir": rdir, "num_test": len(test)}
  return (lambda s, n, x: text_metrics(x, lm, spec.vocab_size)), ref, extras


def make_scorer(teacher, student, specs, reference_dir: str | None, num_latent_nodes: int):
  """(score(sampler, N, tokens) -> dict, data reference values, extras) for the data set.

  The scorer is the one the data set's registry entry names.
  """
  factory = registry.get(teacher.spec.name).scorer_factory()
  return factory(teacher, student, specs, reference_dir, num_latent_nodes)


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

  Returns:
    The results dict written to results.json.
  """
  if not steps or min(steps) < 1:
    raise ValueError(f"steps must be positive integers, got {steps}")
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2, got {num_samples}")
  _check_compatible(teacher, student)
  spec, process = teacher.spec, teacher.process
  specs = sampler_specs(teacher, student, hybrid_teacher_steps)
  batch_size = min(batch_size, num_samples)
  os.makedirs(os.path.join(out_dir, "samples"), exist_ok=True)

  score, data_ref, extras = make_scorer(teacher, student, specs, reference_dir, num_latent_nodes)
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

  results = {
    "data": spec.name,
    "data_config": teacher.config.data.to_dict(),
    "process": teacher.config.process.to_dict(),
    "steps": sorted(set(steps) | set(student_steps)),
    "num_samples": num_samples,
    "seed": seed,
    "hybrid_teacher_steps": hybrid_teacher_steps,
    "primary_metric": PRIMARY[spec.name],
    "latency": lat,
    "data_reference": data_ref,
    "extras": extras,
    "rows": rows,
    "device": str(jax.devices()[0].platform),
    "runs": {"teacher": _describe(teacher), "student": _describe(student)},
  }
  write_report(results, out_dir)
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


# ---------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------


def _metric_columns(results: dict) -> list[str]:
  """Scalar metrics in first-seen order, the primary first, timings last."""
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
  rest.sort(key=lambda c: c != primary)
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
  trainer.write_atomic(
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
  lines += [
    "| sampler | N | " + " | ".join(cols) + " |",
    "|---|---|" + "---|" * len(cols),
    "| data | - | " + " | ".join(_fmt(ref.get(c)) for c in cols) + " |",
  ]
  for row in results["rows"]:
    lines.append(
      f"| {row['sampler']} | {row['steps']} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |"
    )
  lines += step_reduction_table(results)
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
  trainer.write_atomic(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
  plot_quality(results, os.path.join(out_dir, "quality_vs_steps.png"), cols)


def _with_se(row: dict | None, metric: str) -> str:
  if row is None or metric not in row:
    return ""
  se = row.get(f"{metric}_se")
  return _fmt(row[metric]) + (f" ± {_fmt(se)}" if isinstance(se, float) else "")


def step_reduction_table(results: dict) -> list[str]:
  """Markdown lines: the student at N against the teacher at N, 2N and 4N.

  In the primary metric with its standard error; only for the N at which
  the student was evaluated. Empty without a student.
  """
  metric = results["primary_metric"]
  by = {(r["sampler"], r["steps"]): r for r in results["rows"]}
  ns = sorted(n for (name, n) in by if name == "student")
  if not ns:
    return []
  has_hybrid = any(("hybrid", n) in by for n in ns)
  head = ["N", "student N", "teacher N", "teacher 2N", "teacher 4N"] + (
    ["hybrid N"] if has_hybrid else []
  )
  out = [
    "",
    f"Step reduction in {metric} (± standard error):",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for n in ns:
    cells = [str(n), _with_se(by.get(("student", n)), metric)]
    cells += [_with_se(by.get(("teacher", k * n)), metric) for k in (1, 2, 4)]
    if has_hybrid:
      cells.append(_with_se(by.get(("hybrid", n)), metric))
    out.append("| " + " | ".join(cells) + " |")
  return out


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
