"""Tests for mixture_dd.metrics and mixture_dd.reference_models.

The metrics are float64 numpy on the host, so there is nothing to jit; the
ones that take token or label arrays are checked in `chex.TestCase` classes
under `chex.variants(with_device=True, without_device=True)`: on numpy
arrays and on device arrays, as the samplers return them.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_dd import metrics
from mixture_dd import reference_models as rm

# ----------------------------------------------------------------------------
# Frechet distance.


def _random_cov(rng, k, rank=None):
  a = rng.normal(size=(k, rank or k))
  return a @ a.T / k


def test_frechet_self_distance_is_zero():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
  assert metrics.frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-6)


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(1)
  k = 7
  mu1, mu2 = rng.normal(size=k), rng.normal(size=k)
  s1, s2 = rng.uniform(0.1, 3.0, k), rng.uniform(0.1, 3.0, k)
  expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frechet_full_covariance_matches_scipy_sqrtm():
  scipy_linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(2)
  k = 6
  mu1, mu2 = rng.normal(size=k), rng.normal(size=k)
  c1, c2 = _random_cov(rng, k), _random_cov(rng, k)
  covmean = scipy_linalg.sqrtm(c1 @ c2).real
  expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
  got = metrics.frechet_distance(mu1, c1, mu2, c2)
  assert got == pytest.approx(expected, rel=1e-8)


def test_frechet_symmetric_and_singular():
  rng = np.random.default_rng(3)
  k = 8
  mu1, mu2 = rng.normal(size=k), rng.normal(size=k)
  # Rank-deficient covariances: the eigendecomposition route must not NaN.
  c1, c2 = _random_cov(rng, k, rank=3), _random_cov(rng, k, rank=2)
  d12 = metrics.frechet_distance(mu1, c1, mu2, c2)
  d21 = metrics.frechet_distance(mu2, c2, mu1, c1)
  # Another route: c1 c2 is similar to a PSD matrix, so its eigenvalues are
  # real and >= 0 and tr((c1 c2)^{1/2}) is the sum of their square roots.
  # Round-off of size 1e-16 in the zero eigenvalues costs 1e-8 in the roots.
  tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(c1 @ c2).real, 0, None)).sum()
  want = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
  assert d12 == pytest.approx(want, abs=1e-6)
  assert d12 == pytest.approx(d21, rel=1e-8)
  # Fewer samples than features also gives singular fits.
  f1, f2 = rng.normal(size=(5, k)), rng.normal(size=(4, k)) + 1.0
  assert metrics.frechet_distance_from_features(f1, f2) == pytest.approx(
    metrics.frechet_distance_from_features(f2, f1), rel=1e-8
  )


def test_frechet_shape_errors():
  with pytest.raises(ValueError, match="same k"):
    metrics.frechet_distance_from_features(np.zeros((3, 2)), np.zeros((3, 4)))
  with pytest.raises(ValueError, match="covariances"):
    metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------
# Entropy.


class EntropyTest(chex.TestCase):
  @chex.variants(with_device=True, without_device=True)
  def test_unigram_entropy_uniform_and_constant(self):
    v = 6
    unigram_entropy = self.variant(metrics.unigram_entropy, static_argnums=1)
    uniform = np.tile(np.arange(v), (4, 3))
    assert unigram_entropy(uniform, v) == pytest.approx(np.log(v))
    assert unigram_entropy(np.full((5, 9), 2), v) == 0.0
    with pytest.raises(ValueError, match="must lie in"):
      unigram_entropy(np.array([[0, v]]), v)

  @chex.variants(with_device=True, without_device=True)
  def test_sample_entropy_per_token(self):
    per_sample_entropy = self.variant(metrics.per_sample_entropy)
    sample_entropy_per_token = self.variant(metrics.sample_entropy_per_token)
    tokens = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [5, 5, 9, 9]])
    per = per_sample_entropy(tokens)
    chex.assert_shape(per, (3,))
    np.testing.assert_allclose(per, [0.0, np.log(4), np.log(2)], atol=1e-12)
    assert sample_entropy_per_token(tokens) == pytest.approx((np.log(4) + np.log(2)) / 3)
    # Pooled entropy can be high while every sample is degenerate.
    degenerate = np.repeat(np.arange(8)[:, None], 10, axis=1)
    assert sample_entropy_per_token(degenerate) == 0.0
    assert self.variant(metrics.unigram_entropy, static_argnums=1)(degenerate, 8) == (
      pytest.approx(np.log(8))
    )


# ----------------------------------------------------------------------------
# BLEU.


class SelfBleuArrayTest(chex.TestCase):
  @chex.variants(with_device=True, without_device=True)
  def test_self_bleu_identical_is_100_and_disjoint_is_0(self):
    self_bleu = self.variant(metrics.self_bleu)
    text = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    assert metrics.self_bleu([text] * 4) == 100.0
    assert self_bleu(np.array([text] * 3)) == 100.0
    # No shared token: every clipped unigram count is 0, so BLEU is exactly 0.
    assert self_bleu(np.arange(40).reshape(4, 10)) == 0.0


def test_bleu_hand_computed_pair():
  a, b = [1, 2, 3, 4], [1, 2, 3, 5]
  # p1 = 3/4; smoothed p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1).
  expected = 100 * (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
  assert metrics.sentence_bleu(a, [b]) == pytest.approx(expected)
  assert metrics.self_bleu([a, b]) == pytest.approx(expected)


def test_bleu_brevity_penalty_and_clipping():
  # Hypothesis "7 7 7" against reference "7 8 9 10 11": one clipped unigram
  # match, closest reference length 5 > 3 gives BP = exp(1 - 5/3).
  expected = 100 * np.exp(1 - 5 / 3) * (1 / 3 * (0 + 1) / (2 + 1) * (0 + 1) / (1 + 1) * 1.0) ** 0.25
  assert metrics.sentence_bleu([7, 7, 7], [[7, 8, 9, 10, 11]]) == (pytest.approx(expected))


def test_self_bleu_matches_brute_force():
  rng = np.random.default_rng(4)
  samples = [list(rng.integers(0, 4, rng.integers(3, 12))) for _ in range(7)]
  brute = np.mean(
    [metrics.sentence_bleu(s, samples[:i] + samples[i + 1 :]) for i, s in enumerate(samples)]
  )
  assert metrics.self_bleu(samples) == pytest.approx(brute, rel=1e-12)


# ----------------------------------------------------------------------------
# Histograms.


class HistogramTest(chex.TestCase):
  @chex.variants(with_device=True, without_device=True)
  def test_histogram_and_kl_from_uniform(self):
    # Labels come from the device; the frequencies are float64 numpy.
    histogram = self.variant(metrics.histogram, static_argnums=1)
    freqs = histogram(np.array([0, 1, 1, 3]), 4)
    chex.assert_type(freqs, np.float64)
    np.testing.assert_allclose(freqs, [0.25, 0.5, 0.0, 0.25])
    assert metrics.kl_from_uniform(np.full(5, 0.2)) == pytest.approx(0.0)
    assert metrics.kl_from_uniform(freqs) == pytest.approx(
      np.log(4) - (-(0.25 * np.log(0.25) * 2 + 0.5 * np.log(0.5)))
    )
    with pytest.raises(ValueError, match="must lie in"):
      histogram(np.array([0, 4]), 4)


# ----------------------------------------------------------------------------
# Reference models.


def test_digits_classifier_trains_and_roundtrips(tmp_path):
  datasets = pytest.importorskip("sklearn.datasets")
  digits = datasets.load_digits()
  images, labels = digits.data.astype(np.int64), digits.target
  params, meta = rm.train_digits_classifier(
    images[:1500],
    labels[:1500],
    levels=17,
    seed=0,
    steps=150,
    eval_images=images[1500:],
    eval_labels=labels[1500:],
    # The plain 10-way classifier: training, features and the checkpoint
    # round trip. The reject class is checked on the production recipe in
    # tests/test_degenerate_samplers.py.
    reject_fraction=0.0,
  )
  assert meta["test_accuracy"] > 0.9
  assert rm.classifier_accuracy(params, images[1500:], labels[1500:], 17) == (meta["test_accuracy"])

  rm.save_classifier(tmp_path / "clf", params, meta)
  loaded, loaded_meta = rm.load_classifier(tmp_path / "clf")
  assert loaded_meta == meta
  chex.assert_trees_all_equal(loaded, params)
  np.testing.assert_array_equal(
    rm.classifier_predict(loaded, images, 17), rm.classifier_predict(params, images, 17)
  )
  feats = rm.classifier_features(loaded, images, 17)
  chex.assert_shape(feats, (len(images), 64))
  chex.assert_trees_all_equal(feats, rm.classifier_features(params, images, 17))
  # Features separate the classes: FD(0s, 1s) >> FD(0s, other 0s).
  zeros, ones = feats[labels == 0], feats[labels == 1]
  same = metrics.frechet_distance_from_features(zeros[::2], zeros[1::2])
  diff = metrics.frechet_distance_from_features(zeros, ones)
  assert diff > 5 * same


@pytest.fixture(scope="module")
def pattern_lm():
  vocab, length = 8, 16
  rng = np.random.default_rng(0)
  offsets = rng.integers(0, vocab, 256)
  tokens = (np.arange(length)[None] + offsets[:, None]) % vocab
  params = rm.train_char_lm(tokens, vocab, seed=0, steps=80, width=32, num_layers=1, num_heads=2)
  return params, tokens, vocab


def test_char_lm_learns_pattern(pattern_lm, tmp_path):
  params, tokens, vocab = pattern_lm
  nll_per_token = -rm.log_likelihood(params, tokens).mean() / tokens.shape[1]
  assert nll_per_token < 0.3 * np.log(vocab)
  assert rm.generative_perplexity(params, tokens) == pytest.approx(np.exp(nll_per_token), rel=1e-6)

  rm.save_char_lm(tmp_path / "lm", params, {"vocab_size": vocab})
  loaded, meta = rm.load_char_lm(tmp_path / "lm")
  assert meta == {"vocab_size": vocab}
  chex.assert_trees_all_equal(loaded, params)
  np.testing.assert_array_equal(
    rm.log_likelihood(loaded, tokens[:8]), rm.log_likelihood(params, tokens[:8])
  )


def test_char_lm_log_likelihood_brute_force(pattern_lm):
  params, tokens, vocab = pattern_lm
  # Random (off-pattern) sequences, so every term matters.
  x = np.random.default_rng(5).integers(0, vocab, (3, tokens.shape[1]))
  junk = np.random.default_rng(6).integers(0, vocab, x.shape)
  brute = np.zeros(len(x))
  for t in range(x.shape[1]):
    # Inputs agree with x up to position t and are junk after it, so a
    # non-causal model would fail; one input shape keeps it to one compile.
    inputs = np.concatenate([np.full((len(x), 1), vocab), x[:, :t], junk[:, t + 1 :]], axis=1)
    logits = rm.char_lm_logits(params, inputs)[:, t].astype(np.float64)
    shift = logits.max(-1, keepdims=True)
    logp = logits - shift - np.log(np.exp(logits - shift).sum(-1, keepdims=True))
    brute += logp[np.arange(len(x)), x[:, t]]
  np.testing.assert_allclose(rm.log_likelihood(params, x), brute, rtol=1e-4, atol=1e-4)


def test_char_lm_rejects_bad_tokens(pattern_lm):
  params, tokens, vocab = pattern_lm
  with pytest.raises(ValueError, match="must lie in"):
    rm.log_likelihood(params, np.full((1, 4), vocab))
  with pytest.raises(ValueError, match="max_len"):
    rm.log_likelihood(params, np.zeros((1, tokens.shape[1] + 1), int))


def test_bootstrap_se_of_a_mean_matches_the_closed_form():
  """SE of the mean = sd / sqrt(n); 400 resamples estimate it within ~3.5 of
  the estimator's own relative error 1 / sqrt(2 * 399) ~ 3.5 %."""
  x = np.random.default_rng(0).normal(size=2000)
  got = metrics.bootstrap_se(np.mean, x, num_resamples=400)
  want = x.std(ddof=1) / np.sqrt(len(x))
  assert abs(got / want - 1) < 3.5 / np.sqrt(2 * 399), (got, want)


# ----------------------------------------------------------------------------
# Pair statistics of Markov chains.


def _tiny_chain(s=3, d=4, seed=0):
  """A random chain, all s**d sequences and their exact probabilities."""
  from mixture_dd import exact
  from mixture_dd.data import markov

  init, trans = markov.make_chain(s, seed, concentration=1.0)
  states = exact.enumerate_states(s, d)
  return init, trans, states, np.exp(markov.log_prob(states, init, trans))


def test_chain_pair_laws_match_brute_force_enumeration():
  init, trans, states, probs = _tiny_chain()
  s, d = 3, 4
  assert probs.sum() == pytest.approx(1.0)
  for lag in (1, 2, 3):
    laws = metrics.chain_pair_laws(init, trans, d, lag)
    chex.assert_shape(laws, (d - lag, s, s))
    for pos in range(d - lag):
      brute = np.zeros((s, s))
      np.add.at(brute, (states[:, pos], states[:, pos + lag]), probs)
      np.testing.assert_allclose(laws[pos], brute, atol=1e-12)
  with pytest.raises(ValueError, match="lag"):
    metrics.chain_pair_laws(init, trans, d, d)


def test_pair_statistics_of_the_exact_law_are_exact():
  """Every sequence weighted by its probability is the law itself: pair
  frequencies equal the exact laws, pair_tv is 0, pair_entropy is exact."""
  init, trans, states, probs = _tiny_chain()
  laws = {k: metrics.chain_pair_laws(init, trans, 4, k) for k in (1, 2, 3)}
  w = probs * len(probs)
  for k, law in laws.items():
    np.testing.assert_allclose(metrics.pair_frequencies(states, k, 3, w), law, atol=1e-12)
  assert metrics.pair_tv(states, laws, w) == pytest.approx(0.0, abs=1e-12)
  assert metrics.pair_entropy(states, 3, w) == pytest.approx(metrics.exact_pair_entropy(laws[1]))
  # Unweighted, the sequences are uniform over S^D: pair entropy log 9.
  assert metrics.pair_entropy(states, 3) == pytest.approx(np.log(9))


def test_pair_tv_hand_computed_and_weights_repeat_rows():
  # Samples {00, 11} against independent uniform pairs: TV = 4 * 0.25 / 2.
  uniform = {1: np.full((1, 2, 2), 0.25)}
  assert metrics.pair_tv(np.array([[0, 0], [1, 1]]), uniform) == pytest.approx(0.5)
  # A point mass on 00 against the same law: 0.75.
  assert metrics.pair_tv(np.zeros((5, 2), int), uniform) == pytest.approx(0.75)
  assert metrics.pair_entropy(np.zeros((5, 2), int), 2) == 0.0
  init, trans, _, _ = _tiny_chain()
  laws = {k: metrics.chain_pair_laws(init, trans, 4, k) for k in (1, 2)}
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, (7, 4))
  w = rng.integers(0, 4, 7)
  assert metrics.pair_tv(x, laws, w) == pytest.approx(metrics.pair_tv(np.repeat(x, w, 0), laws))
  with pytest.raises(ValueError, match="one per sample"):
    metrics.pair_tv(x, laws, w[:3])


def test_bootstrap_se_weighted_equals_row_resampling():
  x = np.random.default_rng(1).normal(size=300)
  weighted = metrics.bootstrap_se_weighted(lambda w: np.average(x, weights=w), len(x), 50, seed=3)
  assert weighted == pytest.approx(metrics.bootstrap_se(np.mean, x, 50, seed=3), rel=1e-10)


# ----------------------------------------------------------------------------
# n-gram Jensen-Shannon.


def test_js_divergence_closed_forms():
  assert metrics.js_divergence(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(0.0)
  assert metrics.js_divergence(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(
    np.log(2)
  )
  # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4).
  want = 0.5 * np.log(4 / 3) + 0.5 * (0.5 * np.log(2 / 3) + 0.5 * np.log(2))
  p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
  assert metrics.js_divergence(p, q) == pytest.approx(want)
  assert metrics.js_divergence(q, p) == pytest.approx(want)
  with pytest.raises(ValueError, match="non-negative"):
    metrics.js_divergence(np.zeros(2), q)


def _brute_ngram_js(x, ref, max_order):
  """Mean JS over orders from Counters of n-gram tuples."""
  import collections

  vals = []
  for n in range(1, max_order + 1):
    count = lambda rows: collections.Counter(
      tuple(r[i : i + n]) for r in rows.tolist() for i in range(len(r) - n + 1)
    )
    a, b = count(x), count(ref)
    keys = sorted(set(a) | set(b))
    vals.append(
      metrics.js_divergence(
        np.array([a[k] for k in keys], float), np.array([b[k] for k in keys], float)
      )
    )
  return float(np.mean(vals))


def test_ngram_js_matches_brute_force_and_bootstrap():
  rng = np.random.default_rng(0)
  ref = rng.integers(0, 5, (40, 9))
  x = rng.integers(0, 4, (25, 9))  # a smaller alphabet: some n-grams only in ref
  js = metrics.NgramJS(ref, 5, max_order=3)
  assert js(x) == pytest.approx(_brute_ngram_js(x, ref, 3), rel=1e-12)
  assert js(ref) == pytest.approx(0.0, abs=1e-12)
  w = rng.integers(0, 3, len(x))
  assert js(x, w) == pytest.approx(js(np.repeat(x, w, 0)), rel=1e-12)
  value, se = js.with_se(x, 30)
  assert value == js(x)
  assert se == pytest.approx(metrics.bootstrap_se(js, x, 30), rel=1e-10)
  codes = metrics.ngram_codes(np.array([[1, 2, 3]]), 2, 5)
  np.testing.assert_array_equal(codes, [[1 * 5 + 2, 2 * 5 + 3]])
  with pytest.raises(ValueError, match="int64"):
    metrics.ngram_codes(np.zeros((1, 20), int), 20, 96)


def test_frontier_value_interpolates_inside_and_refuses_outside():
  assert metrics.frontier_value([1.0, 3.0, 2.0], [10.0, 50.0, 20.0], 2.5) == pytest.approx(35.0)
  assert metrics.frontier_value([1.0, 2.0], [10.0, 20.0], 1.0) == pytest.approx(10.0)
  assert metrics.frontier_value([1.0, 2.0], [10.0, 20.0], 2.1) is None


# ----------------------------------------------------------------------------
# The digits classifier's reject class.


def test_reject_images_kinds_and_blur():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 17, (30, 64))
  out = rm.reject_images(images, 17, 50, seed=1)
  chex.assert_shape(out, (50, 64))
  assert out.min() >= 0 and out.max() < 17
  np.testing.assert_array_equal(out, rm.reject_images(images, 17, 50, seed=1))
  # A constant image stays constant under the blur; one bright pixel spreads
  # over its 5 x 5 neighbourhood (two 3 x 3 box passes) and keeps its mass.
  np.testing.assert_array_equal(rm._blur(np.full((1, 64), 7), 17), np.full((1, 64), 7))
  dot = np.zeros((1, 64), int)
  dot[0, 3 * 8 + 3] = 16 * 81 // 9  # large enough that rounding keeps a 5 x 5 blob
  blurred = rm._blur(np.minimum(dot, 16), 17, passes=1).reshape(8, 8)
  assert (blurred[2:5, 2:5] > 0).all() and blurred.sum() - blurred[2:5, 2:5].sum() == 0


def test_recognition_needs_the_reject_class():
  datasets = pytest.importorskip("sklearn.datasets")
  digits = datasets.load_digits()
  images, labels = digits.data[:200].astype(np.int64), digits.target[:200]
  plain, meta = rm.train_digits_classifier(images, labels, 17, steps=5, reject_fraction=0.0)
  assert not rm.has_reject_class(plain) and "noise_recognised" not in meta
  with pytest.raises(ValueError, match="no reject class"):
    rm.classifier_recognised(plain, images, 17)


def test_a_reference_model_is_saved_whole_and_once(tmp_path):
  """Saved into a private folder and renamed into place: the first copy of a model wins (two
  evaluations training the same reference at once), a folder holding other files gets the
  model beside them, and nothing temporary is left behind."""
  first, second = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
  rm.save_classifier(tmp_path / "m", first, {"copy": 1})
  rm.save_classifier(tmp_path / "m", second, {"copy": 2})
  params, meta = rm.load_classifier(tmp_path / "m")
  assert meta == {"copy": 1}
  chex.assert_trees_all_equal(params, first)
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "notes.txt").write_text("kept")
  rm.save_char_lm(tmp_path / "busy", second, {"copy": 3})
  assert rm.load_char_lm(tmp_path / "busy")[1] == {"copy": 3}
  assert (tmp_path / "busy" / "notes.txt").read_text() == "kept"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "m"]


def test_a_process_scores_with_the_cached_reference_not_its_own_copy(tmp_path, monkeypatch):
  """Two processes train the same reference model at once: the first save wins, and the one
  that lost must score with the winner too (its own copy can differ in the last bits, and a
  rerun that loads the winner would then not reproduce its numbers)."""
  from types import SimpleNamespace

  from mixture_dd import scorers

  winner, loser = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
  rdir = str(tmp_path / "lm")

  def train_while_another_process_saves_first(tokens, vocab_size, steps):
    rm.save_char_lm(rdir, winner, {"copy": "winner"})
    return loser

  monkeypatch.setattr(rm, "train_char_lm", train_while_another_process_saves_first)
  monkeypatch.setattr(rm, "generative_perplexity", lambda params, tokens: 1.0)
  split = SimpleNamespace(tokens=np.zeros((2, 4), np.int64))
  params, meta = scorers.char_lm(rdir, split, split, vocab_size=5)
  chex.assert_trees_all_equal(params, winner)
  assert meta == {"copy": "winner"}
