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
    student's lambda integrated with Gauss-Legendre nodes), its TV
    (primary), KLs and entropy against the true family; the samples give
    an empirical TV cross-check;
  * markov: pair_tv (primary), the mean TV between the samples' and the
    chain's EXACT laws of (x_d, x_{d+k}), k = 1..3; the oracle NLL per
    token (a cross-entropy: collapse lowers it) and two diversity checks,
    the cross-sample pair entropy and the per-sample entropy;
  * digits: Frechet distance on a reference classifier's features (against
    the train split; the test split's FD is the floor), the fraction
    recognised as a digit (the classifier has a reject class of noise and
    destroyed digits), the label histogram and its KL from uniform, PNGs;
  * pydoc_text: ngram_js (primary), the mean Jensen-Shannon divergence of
    the samples' 1..4-gram frequencies from the held-out test split's,
    generative perplexity under a reference character LM, entropy per
    token, self-BLEU, samples as text; optionally the teacher swept over
    temperature, a frontier of gen_ppl against entropy per token on which
    every student N is placed (`teacher_temperatures`).

Every primary metric is two-sided (collapse and noise both score badly);
the "checks" columns beside it in every report are the diversity (and
recognisability) columns that say which way a sampler errs. Distances
measured from samples (pair_tv, ngram_js, tv_empirical) grow as the number
of samples shrinks, so their data row is scored on as many samples as
every sampler row (`num_samples`).

Every data set also gets the per-call latency of each denoiser (median of
repetitions, same machine, same run) and the wall time of sampling per N.
Writes results.json, results.md and quality_vs_steps.png (and frontier.png
with a temperature sweep) under out_dir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

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
# tiny: exact laws.
# ---------------------------------------------------------------------------


def exact_view(run) -> Callable:
  """A run's `fn(x [n, D], t, lam) -> [n, D, S]` for `exact.sampler_distribution`,
  padded to all S**D states so that it compiles once."""
  # An exact ideal teacher (no network) is its own denoiser.
  fn = run.denoise_fn if run.denoise_fn is not None else denoisers.from_network(run.model)
  return denoisers.exact_view(fn, run.params, run.process.num_states**run.spec.length)


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
  # The hybrid's wrapper hides the student's latent_dim: read it off the mixture's fn.
  mixture_fn = next((f for f, mix in (first, second or (None, False)) if mix), None)
  law, leftover = exact.sampler_distribution(
    process,
    fn,
    length,
    times,
    final=final,
    num_latent_nodes=num_latent_nodes if is_mix else None,
    latent_dim=getattr(mixture_fn, "latent_dim", None),
  )
  if leftover > 1e-6:
    raise ValueError(f"{leftover:.3g} of the mass ended on non-data states")
  return law


def empirical_law(tokens: np.ndarray, num_values: int) -> np.ndarray:
  """Frequencies `[S**D]` of samples `[n, D]` over `exact.enumerate_states`."""
  idx = exact.state_index(tokens, num_values)
  return np.bincount(idx, minlength=num_values ** tokens.shape[1]) / len(tokens)


def law_entropy(law: np.ndarray) -> float:
  """Entropy in nats of an exact law [S**D] (0 log 0 = 0)."""
  law = np.asarray(law, np.float64)
  on = law > 0
  return float(0.0 - (law[on] * np.log(law[on])).sum())  # 0.0 - x: no "-0.0" for a point mass


def tiny_metrics(
  probs: np.ndarray, law: np.ndarray, tokens: np.ndarray | None, num_values: int
) -> dict:
  """TV, KL(data || sampler), KL(sampler || data) of an exact law, its entropy
  (the diversity column: the data's is H(probs)); empirical TV of the samples."""
  out = {
    "tv": exact.total_variation(probs, law),
    "entropy": law_entropy(law),
    "kl": exact.kl_divergence(probs, law),
    "kl_reverse": exact.kl_divergence(law, probs),
  }
  if tokens is not None:
    out["tv_empirical"] = exact.total_variation(probs, empirical_law(tokens, num_values))
  return out


def top_up(tokens: np.ndarray, num: int, draw: Callable, seed: int = 0) -> np.ndarray:
  """The first `num` rows of `tokens` `[n, D]`, or all of them followed by
  `draw(rng, num - n)` more rows when n < num.

  Empirical distances (TV, JS) grow as the number of samples shrinks, so a
  data row is only comparable with sampler rows scored on as many samples;
  where the law is known exactly, fresh draws make up the difference.
  """
  tokens = np.asarray(tokens)
  if num <= len(tokens):
    return tokens[:num]
  rng = np.random.default_rng(seed)
  return np.concatenate([tokens, np.asarray(draw(rng, num - len(tokens)), tokens.dtype)])


def draw_family(rng: np.random.Generator, probs: np.ndarray, num: int, length: int) -> np.ndarray:
  """`num` exact draws `[num, D]` from a law `[S**D]` over `exact.enumerate_states`."""
  num_values = int(round(len(probs) ** (1.0 / length)))
  states = exact.enumerate_states(num_values, length)
  return states[rng.choice(len(probs), num, p=np.asarray(probs, np.float64) / np.sum(probs))]


# ---------------------------------------------------------------------------
# markov, digits, text.
# ---------------------------------------------------------------------------


MARKOV_LAGS = 3  # pair_tv's lags k = 1..3 (why 3: see markov_pair_laws)
BOOTSTRAP = 100  # resamples for the bootstrap standard errors


def markov_pair_laws(init: np.ndarray, trans: np.ndarray, length: int, lags: int = MARKOV_LAGS):
  """{k: exact laws [D - k, S, S] of (x_d, x_{d+k})} for k = 1..lags.

  Three lags: on configs/markov.py's chain the dependence between x_d and
  x_{d+k} (mean TV between the pair law and the product of its marginals)
  is 0.46, 0.19, 0.08 at k = 1, 2, 3 and 0.04 at k = 4, below the
  empirical TV's own noise at 2048 samples; further lags add noise, not
  information.
  """
  return {k: metrics.chain_pair_laws(init, trans, length, k) for k in range(1, lags + 1)}


def markov_metrics(
  tokens: np.ndarray, init: np.ndarray, trans: np.ndarray, laws: dict | None = None
) -> dict:
  """Two-sided distance to the chain's exact law, oracle NLL and diversity.

  * pair_tv (primary; bootstrap SE over samples): mean over lags k and
    positions d of the TV between the samples' and the chain's exact laws
    of (x_d, x_{d+k}) (`metrics.pair_tv`; `laws` from `markov_pair_laws`).
    Biased upwards at finite n: compare rows at the same n.
  * nll_per_token (SE over sequences): the cross-entropy H(q, p) of the
    samples under the chain; one-sided, collapse onto likely sequences
    lowers it.
  * entropy_per_token: mean per-sample unigram entropy (within samples).
  * pair_entropy: mean entropy of the samples' (x_d, x_{d+1}) laws (across
    samples: 0 for one repeated sequence, high for noise or independent
    tokens).
  """
  if laws is None:
    laws = markov_pair_laws(init, trans, tokens.shape[1])
  nll = -markov.log_prob(tokens, init, trans) / tokens.shape[1]  # [n]
  num_values = len(init)
  return {
    "pair_tv": metrics.pair_tv(tokens, laws),
    "pair_tv_se": metrics.bootstrap_se_weighted(
      lambda w: metrics.pair_tv(tokens, laws, w), len(tokens), BOOTSTRAP
    ),
    "nll_per_token": float(nll.mean()),
    "nll_per_token_se": float(nll.std(ddof=1) / np.sqrt(len(nll)))
    if len(nll) > 1
    else float("nan"),
    "entropy_per_token": metrics.sample_entropy_per_token(tokens),
    "pair_entropy": metrics.pair_entropy(tokens, num_values),
  }


CONFIDENT = 0.9  # a sample is "recognised" if a digit class gets p > this (not the reject class)


def digits_metrics(tokens: np.ndarray, clf_params, levels: int, ref_features: np.ndarray) -> dict:
  """FD against reference features (with bootstrap SE over samples), the
  fraction recognised as a digit with probability > 0.9 by the classifier
  with a reject class (binomial SE), the digit-label histogram (argmax over
  the 10 digit classes) and its KL from uniform."""
  feats = np.asarray(reference_models.classifier_features(clf_params, tokens, levels))
  logits = reference_models.classifier_logits(clf_params, tokens, levels)
  hist = metrics.histogram(logits[:, : reference_models.NUM_DIGITS].argmax(-1), 10)
  fd = lambda f: metrics.frechet_distance_from_features(f, ref_features)
  conf = float(reference_models.classifier_recognised(clf_params, tokens, levels, CONFIDENT).mean())
  return {
    "fd": fd(feats),
    "fd_se": metrics.bootstrap_se(fd, feats, BOOTSTRAP),
    "recognised": conf,
    "recognised_se": float(np.sqrt(conf * (1 - conf) / len(feats))),
    "label_kl_uniform": metrics.kl_from_uniform(hist),
    "label_hist": [round(float(h), 4) for h in hist],
  }


NGRAM_ORDER = 4  # ngram_js averages JS over n-gram orders 1..4


def text_metrics(
  tokens: np.ndarray, lm_params, vocab_size: int, ngram_js: metrics.NgramJS | None = None
) -> dict:
  """n-gram JS against held-out text (given `ngram_js`; bootstrap SE),
  generative perplexity (bootstrap SE over samples), unigram entropies and
  self-BLEU (first 100 samples)."""
  length = tokens.shape[1]
  out = {}
  if ngram_js is not None:
    out["ngram_js"], out["ngram_js_se"] = ngram_js.with_se(tokens, BOOTSTRAP)
  ll = reference_models.log_likelihood(lm_params, tokens)  # [n] nats per sequence
  ppl = lambda v: float(np.exp(-np.mean(v) / length))
  out.update(
    gen_ppl=ppl(ll),
    gen_ppl_se=metrics.bootstrap_se(ppl, ll, BOOTSTRAP),
    entropy_per_token=metrics.sample_entropy_per_token(tokens),
    unigram_entropy=metrics.unigram_entropy(tokens, vocab_size),
  )
  if len(tokens) >= 2:
    out["self_bleu"] = metrics.self_bleu(tokens[:SELF_BLEU_SUBSET])
  return out


DIGITS_CLASSIFIER_VERSION = 2  # 2: with the reject class; bump to retire cached classifiers


def _default_reference_dir(spec, data_config) -> str:
  """Cache directory of a reference model: one per (data set, what it was trained on)."""
  del data_config  # The spec holds everything the reference model depends on.
  if spec.name == "digits":
    name = f"digits_L{spec.vocab_size}_v{DIGITS_CLASSIFIER_VERSION}"
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
    params, meta = reference_models.load_classifier(reference_dir)
    if not reference_models.has_reject_class(params):
      raise ValueError(
        f"the digits classifier in {reference_dir} has no reject class (it predates the "
        "repaired 'recognised'); delete that directory to retrain it there, or pass another "
        "reference_dir."
      )
    return params, meta
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
# (teacher, student, specs, reference_dir, num_latent_nodes, num_samples)
#   -> (score(sampler, N, tokens [n, D]) -> dict, data reference dict, extras dict).
# num_samples is the number of samples per row: metrics whose value depends
# on it (empirical TV, JS) get a data row scored on as many data samples.
# extras may hold "checks" (the columns printed beside the primary metric:
# diversity, too little or too much, and what else the primary can miss)
# and "frontier" ((x, y) columns of a quality-at-matched-diversity curve;
# without it a temperature sweep is refused).
# ---------------------------------------------------------------------------

DEFAULT_NUM_SAMPLES = 2048  # launch.evaluate's default


def tiny_scorer(teacher, student, specs, reference_dir, num_latent_nodes, num_samples):
  """Exact laws of every sampler against the true family (TV, both KLs, entropy)."""
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

  data = top_up(
    test.tokens, num_samples, lambda rng, k: draw_family(rng, probs, k, spec.length), seed=1
  )
  ref = tiny_metrics(probs, probs, data, spec.vocab_size)
  extras = {
    "family": cfg.family,
    "num_test": len(test),
    "checks": ["entropy"],
    "data_row": f"the exact family; tv_empirical on {num_samples} draws (test split first)",
  }
  return score, ref, extras


def markov_scorer(teacher, student, specs, reference_dir, num_latent_nodes, num_samples):
  """Pair TV against the chain's exact pair laws (primary), oracle NLL, diversity."""
  del student, specs, reference_dir, num_latent_nodes  # Samples alone are scored.
  spec, cfg = teacher.spec, teacher.config.data
  init, trans = markov.make_chain(cfg.vocab_size, cfg.seed)  # as builders.Markov does
  laws = markov_pair_laws(init, trans, spec.length)
  _, test = pipeline.load(cfg, "test")
  data = top_up(
    test.tokens.astype(np.int64),
    num_samples,
    lambda rng, k: markov.sample(rng, k, spec.length, init, trans),
    seed=cfg.seed + 1,
  )
  ref = markov_metrics(data, init, trans, laws)
  extras = {
    "entropy_rate": markov.entropy_rate(init, trans, spec.length),
    "pair_entropy_exact": metrics.exact_pair_entropy(laws[1]),
    "pair_tv_lags": sorted(laws),
    "num_test": len(test),
    "data_row": f"{num_samples} chain samples: the test split's first rows"
    + (", then fresh draws of the chain" if num_samples > len(test) else ""),
    "checks": ["pair_entropy", "entropy_per_token"],
    "frontier": ("entropy_per_token", "nll_per_token"),
  }
  return (lambda s, n, x: markov_metrics(x, init, trans, laws)), ref, extras


def digits_scorer(teacher, student, specs, reference_dir, num_latent_nodes, num_samples):
  """FD on a reference classifier's features against the train split."""
  del student, specs, num_latent_nodes, num_samples  # FD's data row: the whole test split.
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
    "note": "fd is against the train split; the data row is the test split's fd "
    f"({len(test)} images: FD's bias shrinks with n, so it is a conservative floor)",
    "checks": ["recognised", "label_kl_uniform"],
  }
  return (lambda s, n, x: digits_metrics(x, clf, spec.vocab_size, train_feats)), ref, extras


def text_scorer(teacher, student, specs, reference_dir, num_latent_nodes, num_samples):
  """n-gram JS against the held-out test split (primary), generative perplexity
  under a reference char LM trained on the train split, diversity."""
  del student, specs, num_latent_nodes
  spec, cfg = teacher.spec, teacher.config.data
  _, train_src = pipeline.load(cfg, "train")
  _, test = pipeline.load(cfg, "test")
  rdir = reference_dir or _default_reference_dir(spec, cfg)
  lm, meta = char_lm(rdir, train_src, test, spec.vocab_size)
  js = metrics.NgramJS(test.tokens, spec.vocab_size, NGRAM_ORDER)
  ref = text_metrics(test.tokens.astype(np.int64), lm, spec.vocab_size)
  # The JS of the data row: as many train windows as samples per row (the
  # law every sampler learns), against the same held-out reference.
  rng = np.random.default_rng(0)
  rows = rng.choice(len(train_src), num_samples, replace=num_samples > len(train_src))
  ref["ngram_js"], ref["ngram_js_se"] = js.with_se(train_src.tokens[np.sort(rows)], BOOTSTRAP)
  extras = {
    "char_lm": meta,
    "reference_dir": rdir,
    "num_test": len(test),
    "data_row": f"ngram_js: {num_samples} train windows against the test split; the other "
    "columns: the test split",
    "checks": ["entropy_per_token", "self_bleu"],
    "frontier": ("entropy_per_token", "gen_ppl"),
  }
  return (lambda s, n, x: text_metrics(x, lm, spec.vocab_size, js)), ref, extras


def make_scorer(
  teacher,
  student,
  specs,
  reference_dir: str | None,
  num_latent_nodes: int,
  num_samples: int = DEFAULT_NUM_SAMPLES,
):
  """(score(sampler, N, tokens) -> dict, data reference values, extras) for the data set.

  The scorer is the one the data set's registry entry names; num_samples
  is the number of samples each row will be scored on.
  """
  factory = registry.get(teacher.spec.name).scorer_factory()
  return factory(teacher, student, specs, reference_dir, num_latent_nodes, num_samples)


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

  score, data_ref, extras = make_scorer(
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
    "primary_metric": PRIMARY[spec.name],
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
    results["frontier"] = frontier_comparison(rows, sweep, *frontier_axes)
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
  trainer.write_atomic(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
  plot_quality(results, os.path.join(out_dir, "quality_vs_steps.png"), cols)
  if results.get("frontier"):
    plot_frontier(results, os.path.join(out_dir, "frontier.png"))


def _with_se(row: dict | None, metric: str) -> str:
  if row is None or metric not in row:
    return ""
  se = row.get(f"{metric}_se")
  return _fmt(row[metric]) + (f" ± {_fmt(se)}" if isinstance(se, float) else "")


def step_reduction_table(results: dict) -> list[str]:
  """Markdown lines: the student at N against the teacher at N, 2N and 4N.

  In the primary metric with its standard error, the first check (the
  diversity column) in brackets; only for the N at which the student was
  evaluated. Empty without a student.
  """
  metric = results["primary_metric"]
  check = (results.get("checks") or [None])[0]
  by = {(r["sampler"], r["steps"]): r for r in results["rows"]}
  ns = sorted(n for (name, n) in by if name == "student")
  if not ns:
    return []
  has_hybrid = any(("hybrid", n) in by for n in ns)
  head = ["N", "student N", "teacher N", "teacher 2N", "teacher 4N"] + (
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
  out = [
    "",
    f"Step reduction in {metric} (± standard error{data}{note}):",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for n in ns:
    cells = [str(n), cell(by.get(("student", n)))]
    cells += [cell(by.get(("teacher", k * n))) for k in (1, 2, 4)]
    if has_hybrid:
      cells.append(cell(by.get(("hybrid", n))))
    out.append("| " + " | ".join(cells) + " |")
  return out


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
    "| T | " + " | ".join(cols) + " |",
    "|---|" + "---|" * len(cols),
  ]
  for r in results["temperature_sweep"]:
    out.append(f"| {r['temperature']:g} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
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
