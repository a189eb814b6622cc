"""Sample-quality and diversity metrics, in float64 numpy on the host.

These are evaluation references, not training code: every function takes
arrays (or lists of token lists) and returns plain floats or numpy arrays.

  * Frechet distance between Gaussian fits of feature sets (FID-style; the
    features come from e.g. `reference_models.classifier_features`).
  * Unigram entropies (pooled, and mean per sample as in MDLM/SDTT).
  * Self-BLEU (diversity: lower is more diverse).
  * Class histograms and their KL divergence from uniform (mode coverage).
  * Two-sided distances to a reference law: position-wise pair TV against a
    Markov chain's exact pair laws, n-gram Jensen-Shannon against held-out
    text; the cross-sample pair entropy beside them.
  * Bootstrap standard errors (by row resampling, or by row multiplicities
    for count-based statistics), and a frontier's value at matched diversity.
"""

from __future__ import annotations

import collections
from typing import Sequence, Union

import numpy as np

TokenSamples = Union[np.ndarray, Sequence[Sequence[int]]]


# ----------------------------------------------------------------------------
# Frechet distance.


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix [k, k].

  Tiny negative eigenvalues from round-off are clipped to zero, so singular
  covariances (fewer samples than features, dead units) are fine.
  """
  sym = 0.5 * (mat + mat.T)
  evals, evecs = np.linalg.eigh(sym)
  return (evecs * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
  """Frechet (2-Wasserstein squared) distance between two Gaussians.

    d = ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2}).

  The trace term uses tr((cov1 cov2)^{1/2}) = tr((s1 cov2 s1)^{1/2}) with
  s1 = cov1^{1/2}: s1 cov2 s1 is symmetric PSD, so an eigendecomposition gives
  its square root stably, unlike a general `sqrtm` of the non-symmetric
  product, which can return complex values on singular inputs.

  Args:
    mu1: mean [k].
    cov1: covariance [k, k], symmetric PSD (may be singular).
    mu2: mean [k].
    cov2: covariance [k, k].

  Returns:
    The distance, a float >= 0 (clipped at 0 against round-off).
  """
  mu1 = np.asarray(mu1, np.float64)
  mu2 = np.asarray(mu2, np.float64)
  cov1 = np.asarray(cov1, np.float64)
  cov2 = np.asarray(cov2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"means must be vectors of equal length, got {mu1.shape} and {mu2.shape}")
  k = mu1.shape[0]
  if cov1.shape != (k, k) or cov2.shape != (k, k):
    raise ValueError(
      f"covariances must be [{k}, {k}] to match the means, got {cov1.shape} and {cov2.shape}"
    )
  s1 = _psd_sqrt(cov1)
  inner = s1 @ cov2 @ s1
  evals = np.linalg.eigvalsh(0.5 * (inner + inner.T))
  tr_sqrt = np.sqrt(np.clip(evals, 0.0, None)).sum()
  diff = mu1 - mu2
  dist = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt
  return float(max(dist, 0.0))


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [k] and unbiased covariance [k, k] of features [n, k] (n >= 2)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise ValueError(f"features must be [n, k], got shape {f.shape}")
  if f.shape[0] < 2:
    raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
  return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
  """Frechet distance between Gaussian fits of features f1 [n1, k], f2 [n2, k]."""
  f1 = np.asarray(f1)
  f2 = np.asarray(f2)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(
      f"feature sets must be [n1, k] and [n2, k] with the same k, got {f1.shape} and {f2.shape}"
    )
  mu1, cov1 = gaussian_fit(f1)
  mu2, cov2 = gaussian_fit(f2)
  return frechet_distance(mu1, cov1, mu2, cov2)


def bootstrap_se(statistic, data: np.ndarray, num_resamples: int = 100, seed: int = 0) -> float:
  """Bootstrap standard error of `statistic(data)` over the rows of `data`.

  Resamples the rows with replacement `num_resamples` times (fixed seed);
  returns the standard deviation of the statistic across resamples.
  """
  data = np.asarray(data)
  rng = np.random.default_rng(seed)
  n = len(data)
  vals = [statistic(data[rng.integers(0, n, n)]) for _ in range(num_resamples)]
  return float(np.std(vals, ddof=1))


# ----------------------------------------------------------------------------
# Entropies.


def _entropy_of_counts(counts: np.ndarray) -> np.ndarray:
  """Entropy in nats along the last axis of counts [..., m]; 0 log 0 = 0."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum(-1, keepdims=True)
  p = counts / np.where(total > 0, total, 1.0)
  logp = np.log(np.where(p > 0, p, 1.0))
  return -(p * logp).sum(-1)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
  """Entropy (nats) of the token histogram pooled over all samples.

  Args:
    tokens: int array [n, D] (any shape; it is flattened), values in
      [0, vocab_size).
    vocab_size: V.

  Returns:
    A float in [0, log V].
  """
  tokens = np.asarray(tokens)
  if tokens.size == 0:
    raise ValueError("tokens is empty")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(
      f"tokens must lie in [0, {vocab_size}), got range [{tokens.min()}, {tokens.max()}]"
    )
  counts = np.bincount(tokens.reshape(-1).astype(np.int64), minlength=vocab_size)
  return float(_entropy_of_counts(counts))


def per_sample_entropy(tokens: np.ndarray) -> np.ndarray:
  """Unigram entropy (nats) of each sample's own token histogram.

  Args:
    tokens: int array [n, D].

  Returns:
    float64 [n].
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] == 0:
    raise ValueError(f"tokens must be [n, D] with D > 0, got {tokens.shape}")
  n, d = tokens.shape
  # Count runs in each sorted row instead of a [n, V] histogram, so a large
  # vocabulary (e.g. GPT-2's 50k) costs nothing extra.
  s = np.sort(tokens, axis=1)
  new_run = np.concatenate([np.ones((n, 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
  run_id = np.cumsum(new_run, axis=1) - 1
  flat = (np.arange(n)[:, None] * d + run_id).reshape(-1)
  counts = np.bincount(flat, minlength=n * d).reshape(n, d)
  return _entropy_of_counts(counts)


def sample_entropy_per_token(tokens: np.ndarray) -> float:
  """Mean over samples of the per-sample unigram entropy, in nats.

  The MDLM/SDTT "entropy" diversity check: degenerate (repetitive) samples
  have low entropy even when the pooled histogram looks healthy.

  Args:
    tokens: int array [n, D].
  """
  return float(per_sample_entropy(tokens).mean())


# ----------------------------------------------------------------------------
# BLEU and self-BLEU.


def _ngram_counts(seq: Sequence[int], order: int) -> collections.Counter:
  return collections.Counter(tuple(seq[i : i + order]) for i in range(len(seq) - order + 1))


def _to_token_lists(samples: TokenSamples) -> list[list[int]]:
  if isinstance(samples, np.ndarray):
    if samples.ndim != 2:
      raise ValueError(f"sample array must be [n, D], got {samples.shape}")
    return [list(map(int, row)) for row in samples]
  return [list(map(int, s)) for s in samples]


def _closest_ref_length(hyp_len: int, ref_lens: np.ndarray) -> int:
  # Ties go to the shorter reference, as in NLTK and the original BLEU script.
  gap = np.abs(ref_lens - hyp_len)
  return int(ref_lens[gap == gap.min()].min())


def _bleu_from_stats(hyp_len: int, ref_len: int, matches: Sequence[int], max_order: int) -> float:
  """BLEU in [0, 100] from clipped match counts per order 1..max_order."""
  if hyp_len == 0:
    return 0.0
  log_p = 0.0
  for n in range(1, max_order + 1):
    total = max(hyp_len - n + 1, 0)
    m = matches[n - 1]
    if n == 1:
      if m == 0:
        return 0.0
      log_p += np.log(m / total)
    else:
      # Add-one smoothing for n > 1 (Lin & Och 2004), so short or partially
      # matching samples do not collapse to 0; exact copies keep p_n = 1.
      log_p += np.log((m + 1.0) / (total + 1.0))
  brevity = 0.0 if hyp_len > ref_len else 1.0 - ref_len / hyp_len
  return float(100.0 * np.exp(brevity + log_p / max_order))


def sentence_bleu(
  hypothesis: Sequence[int], references: Sequence[Sequence[int]], max_order: int = 4
) -> float:
  """BLEU (in [0, 100]) of one token sequence against several references.

  Uniform weights over 1..max_order-grams, counts clipped by the maximum
  count in any single reference, brevity penalty against the closest
  reference length, add-one smoothing on orders n > 1. With one hypothesis
  this equals corpus-level BLEU.

  Args:
    hypothesis: token ids [L].
    references: list of token-id lists (at least one).
    max_order: highest n-gram order.
  """
  if max_order < 1:
    raise ValueError(f"max_order must be >= 1, got {max_order}")
  if not references:
    raise ValueError("need at least one reference")
  hyp = list(map(int, hypothesis))
  refs = [list(map(int, r)) for r in references]
  matches = []
  for n in range(1, max_order + 1):
    hyp_counts = _ngram_counts(hyp, n)
    max_ref = collections.Counter()
    for r in refs:
      for g, c in _ngram_counts(r, n).items():
        max_ref[g] = max(max_ref[g], c)
    matches.append(sum(min(c, max_ref[g]) for g, c in hyp_counts.items()))
  ref_len = _closest_ref_length(len(hyp), np.array([len(r) for r in refs]))
  return _bleu_from_stats(len(hyp), ref_len, matches, max_order)


def self_bleu(samples: TokenSamples, max_order: int = 4) -> float:
  """Mean BLEU of each sample against all the others as references.

  A diversity measure: 100 when all samples are identical, near 0 when they
  share no tokens. Equivalent to averaging `sentence_bleu(s_i, others)` but
  in O(total n-grams): for each n-gram we keep its largest and second-largest
  per-sample counts, so the clip "max over references other than i" is the
  largest count unless sample i holds it, in which case it is the second.

  Args:
    samples: int array [n, D] or a list of n token-id lists (n >= 2).
    max_order: highest n-gram order.

  Returns:
    A float in [0, 100].
  """
  if max_order < 1:
    raise ValueError(f"max_order must be >= 1, got {max_order}")
  seqs = _to_token_lists(samples)
  if len(seqs) < 2:
    raise ValueError(f"self-BLEU needs at least 2 samples, got {len(seqs)}")
  lengths = np.array([len(s) for s in seqs])
  # matches[i][n-1]: clipped n-gram matches of sample i against the others.
  matches = np.zeros((len(seqs), max_order), np.int64)
  for n in range(1, max_order + 1):
    counts = [_ngram_counts(s, n) for s in seqs]
    top = {}  # n-gram -> [best count, owner of best, second-best count]
    for i, cnt in enumerate(counts):
      for g, c in cnt.items():
        t = top.get(g)
        if t is None:
          top[g] = [c, i, 0]
        elif c > t[0]:
          top[g] = [c, i, t[0]]
        elif c > t[2]:
          t[2] = c
    for i, cnt in enumerate(counts):
      total = 0
      for g, c in cnt.items():
        best, owner, second = top[g]
        total += min(c, second if owner == i else best)
      matches[i, n - 1] = total
  scores = []
  for i in range(len(seqs)):
    others = np.delete(lengths, i)
    ref_len = _closest_ref_length(int(lengths[i]), others)
    scores.append(_bleu_from_stats(int(lengths[i]), ref_len, matches[i], max_order))
  return float(np.mean(scores))


# ----------------------------------------------------------------------------
# Class histograms.


def histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Class frequencies.

  Args:
    labels: int array [n], values in [0, num_classes).
    num_classes: K.

  Returns:
    float64 [K], summing to one.
  """
  labels = np.asarray(labels).reshape(-1)
  if labels.size == 0:
    raise ValueError("labels is empty")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]"
    )
  counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
  return counts / counts.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
  """KL(p || q) in nats for distributions [K]; 0 log 0 = 0, inf off support."""
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  if p.shape != q.shape:
    raise ValueError(f"p and q shapes differ: {p.shape} vs {q.shape}")
  support = p > 0
  if np.any(q[support] <= 0):
    return float("inf")
  return float((p[support] * np.log(p[support] / q[support])).sum())


def kl_from_uniform(freqs: np.ndarray) -> float:
  """KL(freqs || uniform) = log K - H(freqs), in nats; 0 iff all modes even."""
  freqs = np.asarray(freqs, np.float64)
  if freqs.ndim != 1:
    raise ValueError(f"freqs must be [K], got {freqs.shape}")
  return kl_divergence(freqs, np.full(freqs.shape, 1.0 / freqs.shape[0]))


# ----------------------------------------------------------------------------
# Bootstrap by row multiplicities.


def bootstrap_weights(n: int, num_resamples: int = 100, seed: int = 0):
  """Yields `num_resamples` row multiplicities `[n]` (float64, summing to n).

  Resampling rows with replacement is the same as weighting each row by how
  often it was drawn; statistics built from per-row counts (n-grams, pairs)
  then cost one weighted `bincount` per resample instead of a recount. The
  draws are those of `bootstrap_se` with the same seed.
  """
  rng = np.random.default_rng(seed)
  for _ in range(num_resamples):
    yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def bootstrap_se_weighted(statistic, n: int, num_resamples: int = 100, seed: int = 0) -> float:
  """Bootstrap standard error of `statistic(weights [n])` over n rows.

  `statistic(w)` must equal the statistic of the data with row i repeated
  w[i] times; then this equals `bootstrap_se` of the same statistic.
  """
  vals = [statistic(w) for w in bootstrap_weights(n, num_resamples, seed)]
  return float(np.std(vals, ddof=1))


def _row_weights(weights, n: int) -> np.ndarray:
  if weights is None:
    return np.ones(n, np.float64)
  weights = np.asarray(weights, np.float64)
  if weights.shape != (n,):
    raise ValueError(f"weights must be [{n}] (one per sample), got {weights.shape}")
  return weights


# ----------------------------------------------------------------------------
# Position-wise pair statistics of sequences (Markov chains).


def chain_pair_laws(init: np.ndarray, trans: np.ndarray, length: int, lag: int) -> np.ndarray:
  """Exact laws of (x_d, x_{d+lag}) of a first-order Markov chain.

  P(x_d = a, x_{d+k} = b) = m_d[a] (T^k)[a, b] with m_d = init T^d (the
  chain need not start stationary, so every position has its own law).

  Args:
    init: initial law [S].
    trans: transition matrix [S, S], trans[a, b] = P(x_{d+1} = b | x_d = a).
    length: D.
    lag: k in [1, D).

  Returns:
    float64 [D - k, S, S], each [S, S] slice summing to one.
  """
  init = np.asarray(init, np.float64)
  trans = np.asarray(trans, np.float64)
  s = init.shape[0]
  if trans.shape != (s, s):
    raise ValueError(f"trans must be [{s}, {s}] to match init [{s}], got {trans.shape}")
  if not 1 <= lag < length:
    raise ValueError(f"need 1 <= lag < length, got lag={lag}, length={length}")
  step_k = np.linalg.matrix_power(trans, lag)
  out = np.empty((length - lag, s, s))
  marginal = init
  for d in range(length - lag):
    out[d] = marginal[:, None] * step_k
    marginal = marginal @ trans
  return out


def pair_frequencies(
  tokens: np.ndarray, lag: int, num_values: int, weights: np.ndarray | None = None
) -> np.ndarray:
  """Empirical laws of (x_d, x_{d+lag}) over samples, position by position.

  Args:
    tokens: int [n, D] in [0, num_values).
    lag: k in [1, D).
    num_values: S.
    weights: optional row multiplicities [n] (see `bootstrap_weights`).

  Returns:
    float64 [D - k, S, S], each slice summing to one.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [n, D], got {tokens.shape}")
  n, length = tokens.shape
  if not 1 <= lag < length:
    raise ValueError(f"need 1 <= lag < D, got lag={lag}, D={length}")
  if tokens.min() < 0 or tokens.max() >= num_values:
    raise ValueError(
      f"tokens must lie in [0, {num_values}), got range [{tokens.min()}, {tokens.max()}]"
    )
  w = _row_weights(weights, n)
  t = tokens.astype(np.int64)
  cells = num_values * num_values
  idx = np.arange(length - lag) * cells + t[:, :-lag] * num_values + t[:, lag:]  # [n, D - k]
  counts = np.bincount(
    idx.reshape(-1), np.repeat(w, length - lag), minlength=(length - lag) * cells
  )
  return counts.reshape(length - lag, num_values, num_values) / w.sum()


def pair_tv(
  tokens: np.ndarray, laws: dict[int, np.ndarray], weights: np.ndarray | None = None
) -> float:
  """Mean total variation between empirical and reference pair laws.

  The mean over lags k (the keys of `laws`) and positions d of
  TV(empirical law of (x_d, x_{d+k}), laws[k][d]). It is two-sided: a
  sampler that collapses onto few sequences and one that spreads mass too
  evenly (noise, independent tokens) both move the pair laws away from the
  reference. With n samples it is biased upwards even for a perfect
  sampler (by up to sqrt(2 / pi) sqrt(S^2 / n) / 2, the value for uniform
  pair laws), so rows must be compared at the same n.

  Args:
    tokens: int [n, D].
    laws: {k: [D - k, S, S]}, e.g. from `chain_pair_laws`.
    weights: optional row multiplicities [n].
  """
  return float(np.mean([tv.mean() for tv in pair_tvs(tokens, laws, weights).values()]))


def pair_tvs(
  tokens: np.ndarray, laws: dict[int, np.ndarray], weights: np.ndarray | None = None
) -> dict[int, np.ndarray]:
  """{k: TV(empirical law of (x_d, x_{d+k}), laws[k][d]) for each d, `[D - k]`}.

  `pair_tv`'s terms, position by position: e.g. to split them between the
  pairs inside a local student's block and those that straddle two.
  """
  if not laws:
    raise ValueError("laws is empty: give at least one lag")
  tvs = {}
  for lag, law in sorted(laws.items()):
    emp = pair_frequencies(tokens, lag, law.shape[-1], weights)
    if emp.shape != law.shape:
      raise ValueError(f"lag {lag}: the reference law is {law.shape}, the samples give {emp.shape}")
    tvs[lag] = 0.5 * np.abs(emp - law).sum((-1, -2))
  return tvs


def pair_entropy(tokens: np.ndarray, num_values: int, weights: np.ndarray | None = None) -> float:
  """Mean over positions d of the entropy (nats) of the empirical (x_d, x_{d+1}) law.

  A diversity check across samples: 0 when every sample is the same
  sequence, near log S^2 for noise, and above a correlated source's value
  for independent tokens (H(a, b) <= H(a) + H(b)). The plug-in estimate is
  biased low by about (S^2 - 1) / (2 n): compare rows at the same n.
  """
  freqs = pair_frequencies(tokens, 1, num_values, weights)
  return float(_entropy_of_counts(freqs.reshape(freqs.shape[0], -1)).mean())


def exact_pair_entropy(laws: np.ndarray) -> float:
  """`pair_entropy`'s population value for exact pair laws [D - 1, S, S]."""
  return float(_entropy_of_counts(laws.reshape(laws.shape[0], -1)).mean())


# ----------------------------------------------------------------------------
# n-gram Jensen-Shannon divergence.


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
  """Jensen-Shannon divergence in nats between distributions [K] (in [0, log 2]).

  JS = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2; finite even
  where the supports differ. Inputs are normalised here, so counts work.
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  if p.shape != q.shape or p.ndim != 1:
    raise ValueError(f"p and q must be vectors of one shape, got {p.shape} and {q.shape}")
  if p.sum() <= 0 or q.sum() <= 0 or (p < 0).any() or (q < 0).any():
    raise ValueError("p and q must be non-negative with positive mass")
  p, q = p / p.sum(), q / q.sum()
  m = 0.5 * (p + q)

  def half_kl(a):
    on = a > 0
    return 0.5 * float((a[on] * np.log(a[on] / m[on])).sum())

  return max(half_kl(p) + half_kl(q), 0.0)


def ngram_codes(tokens: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
  """Every n-gram of every row as one integer: `[n, D - order + 1]` int64.

  Code of (a_1, .., a_n) = sum_i a_i V^(n - i), unique for V^order < 2^63.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [n, D], got {tokens.shape}")
  if not 1 <= order <= tokens.shape[1]:
    raise ValueError(f"need 1 <= order <= D = {tokens.shape[1]}, got order={order}")
  if order * np.log2(max(vocab_size, 2)) >= 63:
    raise ValueError(f"{vocab_size}^{order} n-grams do not fit in int64 codes; lower the order")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(
      f"tokens must lie in [0, {vocab_size}), got range [{tokens.min()}, {tokens.max()}]"
    )
  t = tokens.astype(np.int64)
  width = t.shape[1] - order + 1
  codes = np.zeros((t.shape[0], width), np.int64)
  for i in range(order):
    codes = codes * vocab_size + t[:, i : i + width]
  return codes


class NgramJS:
  """Mean n-gram Jensen-Shannon divergence of samples from a fixed reference.

    ngram_js = mean over n = 1..max_order of JS(p_n, r_n),

  p_n, r_n: the n-gram frequencies (pooled over positions and rows) of the
  samples and of the reference text. Two-sided: collapse (few n-grams, too
  often) and noise or independent characters (n-grams the text never has)
  both raise it; 0 iff every order's frequencies agree. Empirical n-gram
  laws of finite samples are noisy, and JS grows with that noise, so the
  value depends on the number of samples: compare rows at the same n.

  The reference is counted once; `__call__(tokens, weights)` costs one
  `np.unique` per order, and `with_se` then reuses it for the bootstrap.
  """

  def __init__(self, reference: np.ndarray, vocab_size: int, max_order: int = 4):
    if max_order < 1:
      raise ValueError(f"max_order must be >= 1, got {max_order}")
    self.vocab_size = vocab_size
    self.orders = tuple(range(1, max_order + 1))
    self.ref = {
      n: np.unique(ngram_codes(reference, n, vocab_size), return_counts=True) for n in self.orders
    }

  def _indexed(self, tokens: np.ndarray):
    """Per order: (index [n, m] of each n-gram in a joint vocabulary, ref counts)."""
    out = []
    for n in self.orders:
      codes = ngram_codes(tokens, n, self.vocab_size)
      ref_codes, ref_counts = self.ref[n]
      joint, inverse = np.unique(
        np.concatenate([ref_codes, codes.reshape(-1)]), return_inverse=True
      )
      ref_full = np.zeros(len(joint))
      ref_full[inverse[: len(ref_codes)]] = ref_counts
      out.append((inverse[len(ref_codes) :].reshape(codes.shape), ref_full))
    return out

  @staticmethod
  def _value(indexed, weights) -> float:
    vals = []
    for inv, ref_full in indexed:
      counts = np.bincount(
        inv.reshape(-1), np.repeat(weights, inv.shape[1]), minlength=len(ref_full)
      )
      vals.append(js_divergence(counts, ref_full))
    return float(np.mean(vals))

  def __call__(self, tokens: np.ndarray, weights: np.ndarray | None = None) -> float:
    """ngram_js of samples [n, D] (rows weighted by `weights` [n] if given)."""
    return self._value(self._indexed(tokens), _row_weights(weights, len(tokens)))

  def with_se(self, tokens: np.ndarray, num_resamples: int = 100) -> tuple[float, float]:
    """(ngram_js, bootstrap standard error over the samples' rows)."""
    indexed = self._indexed(tokens)
    value = self._value(indexed, np.ones(len(tokens)))
    se = bootstrap_se_weighted(lambda w: self._value(indexed, w), len(tokens), num_resamples)
    return value, se


# ----------------------------------------------------------------------------
# Quality at matched diversity.


def frontier_value(frontier_x, frontier_y, x: float) -> float | None:
  """The frontier's y at x by linear interpolation; None outside its x range.

  frontier_x, frontier_y: points [m] of a curve (e.g. a teacher's entropy
  per token and generative perplexity over temperatures), any order.
  """
  fx = np.asarray(frontier_x, np.float64)
  fy = np.asarray(frontier_y, np.float64)
  if fx.shape != fy.shape or fx.ndim != 1 or len(fx) < 1:
    raise ValueError(f"frontier x and y must be vectors of one length, got {fx.shape}, {fy.shape}")
  order = np.argsort(fx)
  fx, fy = fx[order], fy[order]
  if not fx[0] <= x <= fx[-1]:
    return None
  return float(np.interp(x, fx, fy))
