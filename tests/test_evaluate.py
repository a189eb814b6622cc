"""Evaluation: exact laws of hybrids, the tiny and markov reports end to end, the scorer table."""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mixture_dd import (
  configuration,
  denoisers,
  di4c,
  evaluate,
  exact,
  metrics,
  processes,
  reports,
  runs,
  samplers,
  scorers,
  teacher_training,
  train_step,
)
from mixture_dd.configs import markov as markov_cfg
from mixture_dd.configs import tiny as tiny_cfg
from mixture_dd.data import markov, pipeline, registry
from tests.conftest import assert_chi2


def _ideal_fn(proc, probs, length):
  return denoisers.exact_view(
    denoisers.ideal(proc, length), jnp.asarray(probs, jnp.float32), proc.num_states**length
  )


def test_one_step_ideal_sampler_is_the_product_of_marginals():
  """A perfect product denoiser in one masked step draws each token from its
  data marginal: the law is the product of marginals, computed here directly."""
  s, d = 3, 3
  proc = processes.Masked(s, "linear")
  probs = exact.make_family("dirichlet", s, d, seed=0)
  ideal = (_ideal_fn(proc, probs, d), False)
  law = scorers.exact_law(proc, d, 1, ideal)
  states = exact.enumerate_states(s, d)
  marg = [np.bincount(states[:, i], weights=probs, minlength=s) for i in range(d)]
  product = np.prod([marg[i][states[:, i]] for i in range(d)], axis=0)
  np.testing.assert_allclose(law, product, atol=1e-6)
  # More steps of the perfect denoiser only get closer to the data.
  tvs = [exact.total_variation(probs, scorers.exact_law(proc, d, n, ideal)) for n in (1, 4, 16)]
  assert tvs[0] > tvs[1] > tvs[2], tvs


def test_hybrid_exact_law_switches_denoiser_at_the_right_step():
  s, d = 3, 2
  proc = processes.Masked(s, "linear")
  probs = exact.make_family("dirichlet", s, d, seed=1)
  ideal = (_ideal_fn(proc, probs, d), False)
  flat = (lambda x, t, lam: np.zeros(x.shape + (s,)), False)
  for n in (1, 3):
    all_ideal = scorers.exact_law(proc, d, n, ideal)
    all_flat = scorers.exact_law(proc, d, n, flat)
    np.testing.assert_allclose(scorers.exact_law(proc, d, n, flat, ideal, 0), all_ideal, atol=1e-9)
    np.testing.assert_allclose(scorers.exact_law(proc, d, n, flat, ideal, n), all_flat, atol=1e-9)
  # One flat step then two ideal ones lies strictly between the two.
  mixed = scorers.exact_law(proc, d, 3, flat, ideal, 1)
  tv = lambda q: exact.total_variation(probs, q)
  assert tv(all_ideal) < tv(mixed) < tv(all_flat)


def _student_like(teacher_run, scale=0.3):
  """A mixture student made from the teacher without training (fast)."""
  model = configuration.make_model(
    teacher_run.config, teacher_run.spec, teacher_run.process, latent=True
  )
  start = configuration.distill_preset("sdtt", student_start="normal", latent_init_scale=scale)
  params = di4c.initial_student(model, start, 0, teacher_run.params)
  config = ml_collections.ConfigDict(teacher_run.config.to_dict())
  config.is_student = True
  return runs.Run(config, teacher_run.spec, teacher_run.process, model, params, True)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tiny")
  c = tiny_cfg.get_config()
  c.data.data_dir = str(tmp / "tfds")
  c.data.num_train, c.data.num_test = 2000, 500
  c.model.update(width=32, depth=1, heads=2)
  c.train.update(batch_size=64, num_steps=20, log_every=20, ckpt_every=20, sample_every=0)
  teacher_training.train_teacher(c, str(tmp / "teacher"))
  return runs.load_run(str(tmp / "teacher"))


def test_tiny_evaluation_end_to_end(tiny_teacher, tmp_path):
  student = _student_like(tiny_teacher)
  out = str(tmp_path / "eval")
  res = evaluate.evaluate(
    tiny_teacher,
    student,
    [1, 2],
    num_samples=3000,
    seed=0,
    out_dir=out,
    hybrid_teacher_steps=1,
    batch_size=1000,
    latency_reps=3,
  )
  for name in ("results.json", "results.md", "quality_vs_steps.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "results.json")) as f:
    assert json.load(f)["rows"] == json.loads(json.dumps(res["rows"]))
  got = {(r["sampler"], r["steps"]) for r in res["rows"]}
  assert got == {("teacher", 1), ("student", 1), ("teacher", 2), ("student", 2), ("hybrid", 2)}
  for r in res["rows"]:
    assert 0.0 <= r["tv"] <= 1.0 and 0.0 <= r["tv_empirical"] <= 1.0
    assert r["kl"] >= 0 and r["sample_time_s"] > 0
  assert res["latency"]["ratio_student_over_teacher"] > 0
  md = open(os.path.join(out, "results.md")).read()
  assert "| hybrid | 2 |" in md and "| data | - |" in md
  # The exact law is the law of the real sampler: chi-square of the samples.
  s, d = tiny_teacher.spec.vocab_size, tiny_teacher.spec.length
  for sampler in ("teacher", "hybrid"):
    tokens = np.load(os.path.join(out, "samples", f"{sampler}_N2_all.npz"))["tokens"]
    fn = scorers.exact_view(tiny_teacher)
    if sampler == "teacher":
      law = scorers.exact_law(tiny_teacher.process, d, 2, (fn, False))
    else:
      law = scorers.exact_law(
        tiny_teacher.process, d, 2, (scorers.exact_view(student), True), (fn, False), 1
      )
    counts = np.bincount(exact.state_index(tokens, s), minlength=s**d)
    assert_chi2(counts, law)
  # tiny scores exact laws of the untempered sampler: a temperature sweep is refused.
  with pytest.raises(ValueError, match="no quality-against-diversity frontier"):
    evaluate.evaluate(tiny_teacher, None, [1], 10, 0, str(tmp_path / "t"), teacher_temperatures=[2])


def test_markov_data_nll_is_the_entropy_rate(tmp_path):
  c = markov_cfg.get_config()
  c.data.update(
    vocab_size=4, length=8, num_train=200, num_test=2000, data_dir=str(tmp_path / "tfds")
  )
  c.model.update(width=32, depth=1, heads=2)
  spec, _ = pipeline.load(c.data, "train")
  process = configuration.make_process(c, spec)
  model = configuration.make_model(c, spec, process)
  teacher = runs.Run(c, spec, process, model, train_step.init_params(model, 0), False)
  res = evaluate.evaluate(
    teacher,
    None,
    [2],
    num_samples=200,
    seed=0,
    out_dir=str(tmp_path / "eval"),
    batch_size=200,
    latency_reps=2,
  )
  ref = res["data_reference"]
  init, trans = markov.make_chain(4, c.data.seed)
  rate = markov.entropy_rate(init, trans, 8)
  assert res["extras"]["entropy_rate"] == pytest.approx(rate)
  # The test split's mean NLL is an unbiased estimate of the entropy rate.
  assert abs(ref["nll_per_token"] - rate) < 4 * ref["nll_per_token_se"], (ref, rate)
  (row,) = res["rows"]
  assert np.isfinite(row["nll_per_token"]) and 0 < row["entropy_per_token"] <= np.log(4) + 1e-9
  assert os.path.exists(tmp_path / "eval" / "quality_vs_steps.png")


def test_write_report_table_and_plot(tmp_path):
  res = {
    "data": "markov",
    "num_samples": 10,
    "seed": 0,
    "primary_metric": "nll_per_token",
    "hybrid_teacher_steps": 0,
    "extras": {"entropy_rate": 1.0},
    "latency": {"batch_size": 4, "reps": 2, "teacher_s": 0.01},
    "data_reference": {"nll_per_token": 1.0, "entropy_per_token": 1.2},
    "rows": [
      {
        "sampler": "teacher",
        "steps": n,
        "nll_per_token": 1.0 + 1 / n,
        "entropy_per_token": 1.1,
        "sample_time_s": 0.1 * n,
      }
      for n in (1, 2, 4)
    ],
  }
  reports.write_report(res, str(tmp_path))
  md = (tmp_path / "results.md").read_text().splitlines()
  assert md[2].startswith("| sampler | N | nll_per_token | entropy_per_token | sample_time_s")
  assert sum(line.startswith("| teacher |") for line in md) == 3
  assert (tmp_path / "quality_vs_steps.png").stat().st_size > 0
  # With a student: its share of the way to the teacher at 2N beside the teacher rows.
  res["rows"] += [{"sampler": "student", "steps": 1, "nll_per_token": 1.5, "nll_per_token_se": 0.1}]
  reports.write_report(res, str(tmp_path))
  md = (tmp_path / "results.md").read_text()
  assert "| N | student N | teacher N | teacher 2N | teacher 4N | way to 2N (%) |" in md
  assert "| 1 | 1.5 ± 0.1 | 2 | 1.5 | 1.25 | 100 ± 20 |" in md, md


def test_way_to_2n_is_the_share_of_the_gap_with_its_delta_method_error():
  row = lambda v, se=0.0: {"pair_tv": v, "pair_tv_se": se}
  share, se = reports.way_to_2n(row(0.2), row(0.3), row(0.1), "pair_tv")
  np.testing.assert_allclose([share, se], [50.0, 0.0], atol=1e-9)
  # 0 at the teacher at N, 100 at 2N; a metric that rises with quality gives the same share.
  assert reports.way_to_2n(row(0.3), row(0.3), row(0.1), "pair_tv")[0] == 0.0
  np.testing.assert_allclose(reports.way_to_2n(row(0.1), row(0.3), row(0.1), "pair_tv")[0], 100)
  np.testing.assert_allclose(reports.way_to_2n(row(-0.2), row(-0.3), row(-0.1), "pair_tv")[0], 50)
  for missing in [
    (None, row(0.3), row(0.1)),
    (row(0.2), row(0.3), row(0.3)),
    (row(0.2), {}, row(0.1)),
  ]:
    assert reports.way_to_2n(*missing, "pair_tv") is None
  # The error against Monte Carlo over the three rows' normal errors (the README's Markov
  # exact-teacher row at N = 1: 127 % of the way).
  rows = [(0.1271, 0.0014), (0.2556, 0.0012), (0.1547, 0.0015)]
  share, se = reports.way_to_2n(*[row(v, e) for v, e in rows], "pair_tv")
  draws = np.random.default_rng(0).normal([v for v, _ in rows], [e for _, e in rows], (200_000, 3))
  mc = 100 * (draws[:, 1] - draws[:, 0]) / (draws[:, 1] - draws[:, 2])
  np.testing.assert_allclose(share, 127.35, atol=0.01)
  np.testing.assert_allclose(se, np.std(mc), rtol=0.05)


def test_text_metrics_smoke():
  from mixture_dd import reference_models

  lm = reference_models.CharLM(4, 16, width=16, num_layers=1, num_heads=2)
  params = lm.init(jax.random.key(0), np.zeros((1, 16), np.int32))  # untrained: ppl near 4
  tokens = np.random.default_rng(0).integers(0, 4, (50, 16))
  out = scorers.text_metrics(tokens, params, 4)
  assert 1 < out["gen_ppl"] < 8 and 0 <= out["self_bleu"] <= 100
  assert out["unigram_entropy"] == pytest.approx(np.log(4), abs=0.05)


def _fake_run(data_config):
  """What a scorer reads of a run: its spec and config.data."""
  spec = pipeline.data_spec(data_config)
  return types.SimpleNamespace(spec=spec, config=ml_collections.ConfigDict({"data": data_config}))


def test_make_scorer_reads_the_scorer_table(tmp_path):
  # Every data set with a scorer is a registered one, ranked by a two-sided metric.
  assert set(scorers.SCORERS) <= set(registry.names())
  assert {name: s.primary_metric for name, s in scorers.SCORERS.items()} == {
    "markov": "pair_tv",
    "tiny": "tv",
    "digits": "fd",
    "pydoc_text": "ngram_js",
  }
  # A data set added with its own scorer is evaluated by it, nothing else.
  calls = []

  def toy_scorer(teacher, student, specs, reference_dir, num_latent_nodes, num_samples):
    calls.append((teacher.spec.name, student, specs, reference_dir, num_latent_nodes, num_samples))
    return (lambda s, n, x: {"mean": float(x.mean())}), {"mean": 1.5}, {}

  registry.register(
    registry.DataSet(
      "toy_scored",
      "generated",
      dict(vocab_size=4, length=3),
      spec=registry.tokens_spec,
      open=lambda *a: None,
    )
  )
  scorers.register("toy_scored", toy_scorer, "mean")
  try:
    with pytest.raises(ValueError, match="already has a scorer"):
      scorers.register("toy_scored", toy_scorer, "mean")
    cfg = pipeline.default_data_config("toy_scored")
    score, ref, _ = scorers.make_scorer(_fake_run(cfg), None, {"teacher": 0}, "/r", 8, 64)
    assert calls == [("toy_scored", None, {"teacher": 0}, "/r", 8, 64)]
    assert score("teacher", 1, np.ones((2, 3))) == {"mean": 1.0} and ref == {"mean": 1.5}
    assert scorers.get("toy_scored").primary_metric == "mean"
  finally:
    scorers.unregister("toy_scored")
    registry.unregister("toy_scored")
  assert "toy_scored" not in scorers.SCORERS
  with pytest.raises(ValueError, match="data set 'cifar10' \\(a data set\\) has no scorer"):
    scorers.make_scorer(_fake_run(pipeline.default_data_config("cifar10")), None, {}, None, 8)


def test_a_token_array_has_no_scorer_and_says_what_to_do():
  """Data "array" (a token array passed to distill_student) cannot be
  evaluated: the error names it and says how to score its samples instead."""
  spec = pipeline.DataSpec(pipeline.ARRAY, 4, 6, 0, None, "tokens")
  run = types.SimpleNamespace(spec=spec)
  with pytest.raises(ValueError) as info:
    scorers.make_scorer(run, None, {}, None, 8)
  msg = str(info.value)
  assert "data set 'array' (a token array passed in) has no scorer" in msg
  assert "evaluation needs a registered data set with a scorer" in msg
  assert "runs.sample" in msg and "scorers.register" in msg


def test_markov_scorer_scores_against_the_true_chain(tmp_path):
  cfg = pipeline.default_data_config("markov")
  cfg.update(vocab_size=4, length=6, num_train=50, num_test=300, data_dir=str(tmp_path))
  init, trans = markov.make_chain(4, cfg.seed)
  _, test = pipeline.load(cfg, "test")
  # The data row is scored on as many samples as a sampler row.
  score, ref, extras = scorers.make_scorer(_fake_run(cfg), None, {}, None, 8, 200)
  assert ref == scorers.markov_metrics(test.tokens[:200].astype(np.int64), init, trans)
  laws = scorers.markov_pair_laws(init, trans, 6)
  assert extras == {
    "entropy_rate": pytest.approx(markov.entropy_rate(init, trans, 6)),
    "pair_entropy_exact": pytest.approx(metrics.exact_pair_entropy(laws[1])),
    "pair_tv_lags": [1, 2, 3],
    "num_test": 300,
    "data_row": "200 chain samples: the test split's first rows",
    "checks": ["pair_entropy", "entropy_per_token"],
    "frontier": ("entropy_per_token", "nll_per_token"),
  }
  x = np.random.default_rng(0).integers(0, 4, (20, 6))
  assert score("student", 2, x) == scorers.markov_metrics(x, init, trans)
  # Uniform noise is far less likely under the chain than its own samples.
  assert score("student", 2, x)["nll_per_token"] > ref["nll_per_token"] + 0.1
  # Beyond the test split's size, fresh draws of the chain fill the data row.
  _, big, extras = scorers.make_scorer(_fake_run(cfg), None, {}, None, 8, 500)
  assert extras["data_row"].endswith("then fresh draws of the chain")
  assert abs(big["pair_tv"] - ref["pair_tv"]) < 0.1 and big["pair_tv"] < ref["pair_tv"]


def test_default_reference_dir_keeps_its_cache_names(monkeypatch, tmp_path):
  digits = pipeline.DataSpec("digits", 17, 64, 10, (8, 8), "image")
  monkeypatch.delenv("MDD_REFERENCE_ROOT", raising=False)
  # v2: the classifier with a reject class; a cached 10-way one is not reused.
  assert scorers._default_reference_dir(digits, None) == os.path.expanduser(
    os.path.join("~", ".cache", "mixture_dd", "reference", "digits_L17_v2")
  )
  monkeypatch.setenv("MDD_REFERENCE_ROOT", str(tmp_path))  # the test suite's one cache per run
  assert scorers._default_reference_dir(digits, None) == str(tmp_path / "digits_L17_v2")
  text = pipeline.DataSpec("pydoc_text", 96, 64, 0, None, "text")
  assert os.path.basename(scorers._default_reference_dir(text, None)).startswith(
    "pydoc_text_D64_src"
  )
  other = pipeline.DataSpec("text8", 27, 256, 0, None, "text")
  assert os.path.basename(scorers._default_reference_dir(other, None)) == "text8_D256_V27"


def test_sampler_temperature_draws_from_tempered_logits():
  """One masked step to t = 0 draws every token from softmax(logits / T):
  chi-square of 4000 x 4 tokens against that law at T = 0.5 and 2. T = 1
  (logits / 1.0 is exact) reproduces the untempered sampler bit for bit."""
  s = 3
  proc = processes.Masked(s, "linear")
  logits = jnp.log(jnp.array([0.6, 0.3, 0.1]))
  den = denoisers.from_function(lambda p, x, t: logits + 0.0 * x[..., None])
  draw = lambda temperature: np.asarray(
    samplers.sample(jax.random.key(0), proc, den, None, 4000, 4, 1, temperature=temperature)
  )
  for temp in (0.5, 2.0):
    want = np.exp(np.asarray(logits) / temp)
    assert_chi2(np.bincount(draw(temp).reshape(-1), minlength=s), want / want.sum())
  np.testing.assert_array_equal(draw(1.0), draw(None))
  assert not np.array_equal(draw(0.5), draw(None))


def test_frontier_comparison_interpolates_in_entropy():
  sweep = [
    {"temperature": t, "steps": 8, "entropy_per_token": h, "gen_ppl": p}
    for t, h, p in ((0.8, 2.0, 10.0), (1.0, 2.5, 20.0), (1.2, 3.0, 40.0))
  ]
  rows = [
    {"sampler": "student", "steps": 1, "entropy_per_token": 2.25, "gen_ppl": 14.0},
    {"sampler": "student", "steps": 2, "entropy_per_token": 2.75, "gen_ppl": 31.0},
    {"sampler": "student", "steps": 4, "entropy_per_token": 3.5, "gen_ppl": 50.0},
    {"sampler": "teacher", "steps": 8, "entropy_per_token": 2.5, "gen_ppl": 20.0},
  ]
  front = reports.frontier_comparison(rows, sweep, "entropy_per_token", "gen_ppl")
  got = {st["steps"]: (st["frontier"], st["position"]) for st in front["students"]}
  # Linear in entropy: 15 at 2.25 (14 is below), 30 at 2.75 (31 is above).
  assert got == {
    1: (pytest.approx(15.0), "below"),
    2: (pytest.approx(30.0), "above"),
    4: (None, "outside"),
  }
  assert front["teacher_steps"] == 8 and len(front["teacher"]) == 3
  assert metrics.frontier_value([3.0, 1.0], [30.0, 10.0], 2.0) == pytest.approx(20.0)


def test_markov_temperature_sweep_and_checks_in_the_report(tmp_path):
  """evaluate(teacher_temperatures=...) on a markov teacher: the sweep rows,
  the frontier with the student on it, frontier.png, the checks columns
  next to the primary metric and inside the step-reduction table."""
  c = markov_cfg.get_config()
  c.data.update(vocab_size=4, length=8, num_train=200, num_test=300, data_dir=str(tmp_path / "d"))
  c.model.update(width=32, depth=1, heads=2)
  spec, _ = pipeline.load(c.data, "train")
  process = configuration.make_process(c, spec)
  model = configuration.make_model(c, spec, process)
  teacher = runs.Run(c, spec, process, model, train_step.init_params(model, 0), False)
  student = _student_like(teacher)
  out = tmp_path / "eval"
  res = evaluate.evaluate(
    teacher,
    student,
    [1, 2],
    num_samples=100,
    seed=0,
    out_dir=str(out),
    batch_size=100,
    latency_reps=2,
    student_steps=[1],
    teacher_temperatures=(0.5, 1.0, 3.0),
  )
  assert res["primary_metric"] == "pair_tv" and res["checks"][0] == "pair_entropy"
  sweep = res["temperature_sweep"]
  assert [r["temperature"] for r in sweep] == [0.5, 1.0, 3.0] and {r["steps"] for r in sweep} == {2}
  # T = 1 at an N already sampled is that row; colder draws are less diverse.
  t2 = next(r for r in res["rows"] if (r["sampler"], r["steps"]) == ("teacher", 2))
  assert sweep[1]["pair_tv"] == t2["pair_tv"]
  assert sweep[0]["entropy_per_token"] < sweep[2]["entropy_per_token"]
  (st,) = res["frontier"]["students"]
  assert st["steps"] == 1 and st["position"] in ("below", "above", "outside")
  md = (out / "results.md").read_text()
  header = next(line for line in md.splitlines() if line.startswith("| sampler |"))
  assert header.startswith(
    "| sampler | N | pair_tv | pair_tv_se | pair_entropy | entropy_per_token"
  )
  assert "in brackets: pair_entropy" in md and "- student N = 1: entropy_per_token" in md
  assert (out / "frontier.png").stat().st_size > 0
  saved = json.loads((out / "results.json").read_text())
  assert saved["frontier"]["y"] == "nll_per_token" and "pair_tv_se" in saved["data_reference"]
