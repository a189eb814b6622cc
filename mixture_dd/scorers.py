"""What a sample is worth, per data set: metrics, reference models and scorers.

`SCORERS` maps a data set's name (config.data.name) to its `Scorer`: the
function that builds the scoring closure for a teacher (and student) run and
the primary metric the report ranks by. `make_scorer` reads it; data sets
without an entry (e.g. a token array passed in, data "array") cannot be
evaluated and say so. Every primary metric is two-sided (collapse and noise
both score badly); the "checks" columns beside it say which way a sampler
errs:

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
    destroyed digits), the label histogram and its KL from uniform;
  * pydoc_text: ngram_js (primary), the mean Jensen-Shannon divergence of
    the samples' 1..4-gram frequencies from the held-out test split's,
    generative perplexity under a reference character LM, entropy per
    token, self-BLEU; a frontier of gen_ppl against entropy per token for
    a temperature sweep.

Distances measured from samples (pair_tv, ngram_js, tv_empirical) grow as
the number of samples shrinks, so a data row is scored on as many samples
as every sampler row (`num_samples`).

The reference models (digits classifier, char LM) are trained on first use
and cached under `reference_root()` ($MDD_REFERENCE_ROOT, else
DEFAULT_REFERENCE_ROOT). The generic metric primitives live
in `metrics`; here they are bound to each data set's reference.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np

from mixture_dd import denoisers, exact, metrics, reference_models, samplers
from mixture_dd.data import builders, markov, pipeline

log = logging.getLogger("mixture_dd")

DEFAULT_REFERENCE_ROOT = os.path.join("~", ".cache", "mixture_dd", "reference")
REFERENCE_ROOT_ENV = "MDD_REFERENCE_ROOT"


def reference_root() -> str:
  """Where reference models are cached: $MDD_REFERENCE_ROOT if set (the test suite points it at
  one folder per run), else DEFAULT_REFERENCE_ROOT."""
  return os.path.expanduser(os.environ.get(REFERENCE_ROOT_ENV) or DEFAULT_REFERENCE_ROOT)


SELF_BLEU_SUBSET = 100


# ---------------------------------------------------------------------------
# tiny: exact laws of the samplers. Here rather than beside draw_samples in
# evaluate: the tiny scorer needs them, and evaluate imports this module.
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
  return os.path.join(reference_root(), name)


def digits_classifier(reference_dir: str, train, test, levels: int):
  """(params, meta): the classifier cached in reference_dir, trained on train and saved there
  first if it is missing. Always the copy on disk, see `_cached`."""

  def train_and_save():
    params, meta = reference_models.train_digits_classifier(
      train.tokens, train.labels, levels, eval_images=test.tokens, eval_labels=test.labels
    )
    reference_models.save_classifier(reference_dir, params, meta)

  params, meta = _cached(
    reference_dir, "digits classifier", train_and_save, reference_models.load_classifier
  )
  if not reference_models.has_reject_class(params):
    raise ValueError(
      f"the digits classifier in {reference_dir} has no reject class (it predates the "
      "repaired 'recognised'); delete that directory to retrain it there, or pass another "
      "reference_dir."
    )
  return params, meta


def char_lm(reference_dir: str, train, test, vocab_size: int, steps: int = 1000):
  """(params, meta): the reference CharLM cached in reference_dir, trained on the train split
  and saved there first if it is missing. Always the copy on disk, see `_cached`."""

  def train_and_save():
    params = reference_models.train_char_lm(train.tokens, vocab_size, steps=steps)
    meta = {
      "steps": steps,
      "vocab_size": vocab_size,
      "length": int(train.tokens.shape[1]),
      "test_ppl": reference_models.generative_perplexity(params, test.tokens),
    }
    reference_models.save_char_lm(reference_dir, params, meta)

  return _cached(reference_dir, "reference char LM", train_and_save, reference_models.load_char_lm)


def _cached(reference_dir: str, what: str, train_and_save, load):
  """load(reference_dir), after train_and_save() when nothing is cached there yet.

  The model a process scores with is the one on disk, never its own fresh copy: when two
  processes train the same reference at once, the first save wins (reference_models._save)
  and both must then use it, since a second training can differ in the last bits (other
  compiled programs, other machines' threads) and so would the scores of a rerun that loads
  the winner (seen on CI: a resumed demo's FD off by 1e-6 from the straight run's)."""
  if os.path.isdir(os.path.join(reference_dir, "params")):
    log.info("loading the %s from %s", what, reference_dir)
  else:
    log.info("training the %s (cached in %s)", what, reference_dir)
    train_and_save()
  return load(reference_dir)


# ---------------------------------------------------------------------------
# The metric of a data set, as one object. Each *_scorer has the signature
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


@dataclasses.dataclass(frozen=True)
class Scorer:
  """How evaluation scores one data set.

  Attributes:
    make: (teacher, student, specs, reference_dir, num_latent_nodes,
      num_samples) -> (score(sampler, N, tokens [n, D]) -> dict, data
      reference dict, extras dict); see the *_scorer functions.
    primary_metric: the metric the report is ranked by, a key of score's
      dict; two-sided (collapse and noise must both score badly).
  """

  make: Callable
  primary_metric: str


# The data-name -> scorer table; `register` adds to it.
SCORERS: dict[str, Scorer] = {
  "markov": Scorer(markov_scorer, "pair_tv"),
  "tiny": Scorer(tiny_scorer, "tv"),
  "digits": Scorer(digits_scorer, "fd"),
  "pydoc_text": Scorer(text_scorer, "ngram_js"),
}


def register(name: str, make: Callable, primary_metric: str) -> Scorer:
  """Scores data set `name` (registered with `data.registry.register`) with
  `make` (a *_scorer-like function), ranked by `primary_metric`; a name is
  registered once (no silent replacement)."""
  if name in SCORERS:
    raise ValueError(
      f"data set {name!r} already has a scorer; call scorers.unregister({name!r}) first."
    )
  SCORERS[name] = Scorer(make, primary_metric)
  return SCORERS[name]


def unregister(name: str) -> None:
  """Removes a data set's scorer (for tests and notebooks that add their own)."""
  SCORERS.pop(name, None)


def get(name: str) -> Scorer:
  """The scorer of data set `name`, or a ValueError that says what to do instead."""
  if name not in SCORERS:
    what = "a token array passed in" if name == pipeline.ARRAY else "a data set"
    raise ValueError(
      f"data set {name!r} ({what}) has no scorer: evaluation needs a registered data set "
      f"with a scorer, one of {sorted(SCORERS)}. Sample the runs with runs.sample and score "
      "the samples yourself, or register the data set (mixture_dd.data.registry.register) "
      "and its scorer (mixture_dd.scorers.register)."
    )
  return SCORERS[name]


def make_scorer(
  teacher,
  student,
  specs,
  reference_dir: str | None,
  num_latent_nodes: int,
  num_samples: int = DEFAULT_NUM_SAMPLES,
):
  """(score(sampler, N, tokens) -> dict, data reference values, extras) for the data set.

  The scorer is the data set's entry in SCORERS; num_samples is the number
  of samples each row will be scored on.
  """
  make = get(teacher.spec.name).make
  return make(teacher, student, specs, reference_dir, num_latent_nodes, num_samples)
