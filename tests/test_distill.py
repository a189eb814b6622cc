"""Di4C: the mixture likelihood, C, each loss term against slow references,
stop-gradients, the student-equals-teacher start and the time presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_dd import configuration, denoisers, di4c, exact, losses, networks, processes
from tests.conftest import random_log_probs


def test_mixture_likelihood_and_correlation_against_brute_force():
  b, l, d, s = 2, 4, 3, 3
  lp = np.asarray(random_log_probs(jax.random.key(0), b, l, d, s), np.float64)
  states = exact.enumerate_states(s, d)
  x0 = jnp.asarray(np.stack([states, states]))  # every x0 for each example: [B, 27, D]
  got_ll = np.asarray(losses.mixture_log_likelihood(jnp.asarray(lp, jnp.float32), x0))
  got_c = np.asarray(losses.correlation(jnp.asarray(lp, jnp.float32), x0))
  p = np.exp(lp)
  for bi in range(b):
    total = 0.0
    for m, x in enumerate(states):
      mix = np.mean([np.prod([p[bi, j, dd, x[dd]] for dd in range(d)]) for j in range(l)])
      marg = np.prod([np.mean(p[bi, :, dd, x[dd]]) for dd in range(d)])
      total += mix
      np.testing.assert_allclose(got_ll[bi, m], np.log(mix), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(got_c[bi, m], np.log(mix) - np.log(marg), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(total, 1.0, atol=1e-9)  # the mixture is a distribution


def test_correlation_is_zero_when_components_agree():
  lp = jnp.repeat(random_log_probs(jax.random.key(1), 3, 1, 4, 5), 6, axis=1)
  x0 = jax.random.randint(jax.random.key(2), (3, 7, 4), 0, 5)
  np.testing.assert_allclose(losses.correlation(lp, x0), 0.0, atol=1e-5)


def test_mixture_total_correlation_is_the_enumerated_one():
  """The sampled TC of an L-mixture against sum_x m(x) log(m(x) / prod_d mbar_d(x^d)) over all S^D
  states, within 5 standard errors of the estimator (its variance, enumerated too); exactly 0
  when the components agree."""
  b, l, d, s, draws = 2, 4, 3, 3, 20000
  lp = np.asarray(random_log_probs(jax.random.key(4), b, l, d, s), np.float64)
  states = exact.enumerate_states(s, d)
  p = np.exp(lp)
  got = np.asarray(
    di4c.mixture_total_correlation(jax.random.key(5), jnp.asarray(lp, jnp.float32), draws)
  )
  for bi in range(b):
    comp = np.prod(p[bi][:, np.arange(d), states], axis=-1).T  # [M, L]: each component's law
    mix = comp.mean(-1)
    c = np.log(mix) - np.sum(np.log(p[bi].mean(0)[np.arange(d), states]), axis=-1)
    tc = np.sum(mix * c)
    se = np.sqrt((np.sum(mix * c**2) - tc**2) / draws)
    assert tc > 0.1 and abs(got[bi] - tc) < 5 * se, (bi, got[bi], tc, se)
  same = jnp.repeat(random_log_probs(jax.random.key(6), 3, 1, 4, 5), 6, axis=1)
  np.testing.assert_allclose(
    di4c.mixture_total_correlation(jax.random.key(7), same, 50), 0.0, atol=1e-5
  )


def _kl(p_log, q_log):
  p = np.exp(p_log)
  return float(np.sum(np.where(p > 0, p * (p_log - q_log), 0.0)))


def test_loss_terms_against_slow_reference():
  b, l, d, s = 3, 5, 4, 3
  k = jax.random.split(jax.random.key(3), 5)
  lp = random_log_probs(k[0], b, l, d, s)
  q = random_log_probs(k[1], b, l, d, s)
  teacher = jax.nn.log_softmax(jax.random.normal(k[2], (b, d, s)), -1)
  x0_i = jax.random.randint(k[3], (b, l, d), 0, s)
  x0 = jax.random.randint(k[4], (b, d), 0, s)
  alpha = jnp.array([0.1, 0.5, 1.0])
  got_c = np.asarray(losses.consistency_term(lp, q, x0_i))
  got_d = np.asarray(losses.distillation_term(teacher, lp))
  got_data = np.asarray(
    losses.data_correlation_term(lp, x0, alpha) + losses.marginal_term(lp, teacher)
  )
  teacher_per_latent = random_log_probs(k[2], b, l, d, s)
  got_d_per_latent = np.asarray(losses.distillation_term(teacher_per_latent, lp))
  lp64, q64, t64 = (np.asarray(a, np.float64) for a in (lp, q, teacher))
  for bi in range(b):
    lpbar = np.log(np.mean(np.exp(lp64[bi]), 0))  # [D, S]

    def c_of(x):
      comps = [np.sum([lp64[bi, j, dd, x[dd]] for dd in range(d)]) for j in range(l)]
      return np.log(np.mean(np.exp(comps))) - np.sum([lpbar[dd, x[dd]] for dd in range(d)])

    pbar_u = np.log(np.mean(np.exp(q64[bi]), 0))
    ref_c = -np.mean([c_of(np.asarray(x0_i[bi, i])) for i in range(l)]) + _kl(pbar_u, lpbar)
    ref_d = np.mean([_kl(t64[bi], lp64[bi, j]) for j in range(l)])
    ref_data = -float(alpha[bi]) * c_of(np.asarray(x0[bi])) + _kl(t64[bi], lpbar)
    np.testing.assert_allclose(got_c[bi], ref_c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_d[bi], ref_d, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_data[bi], ref_data, rtol=1e-4, atol=1e-5)
    ref_dl = np.mean(
      [_kl(np.asarray(teacher_per_latent[bi, j], np.float64), lp64[bi, j]) for j in range(l)]
    )
    np.testing.assert_allclose(got_d_per_latent[bi], ref_dl, rtol=1e-4, atol=1e-5)


def test_kl_ignores_zero_probability_entries():
  p = jnp.array([[0.0, -1e6]])
  q = jnp.array([[-1e6, 0.0]])
  assert np.isfinite(float(losses.kl_categorical(p, q)))
  assert float(losses.kl_categorical(p, q)) == pytest.approx(1e6)


def _tiny_setup(num_latents=4, mode="same"):
  proc = processes.Masked(3, "linear")
  probs = exact.make_family("dirichlet", 3, 3, seed=0)
  teacher = di4c.ideal_teacher(proc, probs, 3)
  model = networks.Transformer(
    num_states=4,
    vocab_size=3,
    length=3,
    width=16,
    depth=1,
    heads=2,
    latent=True,
    mask_id=3,
    positions="learned",
  )
  params = model.init(
    jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros(1), lam=jnp.zeros(1)
  )["params"]
  # Non-zero latent path, so components differ and C is non-trivial.
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), params)
  d = configuration.distill_preset(
    "sdtt",
    num_latents=num_latents,
    distill_mode=mode,
    data_weight=1.0,
    t_sampling="uniform",
    distill_lo=0.01,
    distill_hi=0.02,
  )
  return proc, probs, teacher, model, params, d


@pytest.mark.parametrize("mode", ["same", "separate"])
def test_no_gradient_reaches_teacher_or_the_targets(mode):
  proc, probs, teacher, model, params, d = _tiny_setup(mode=mode)
  base = denoisers.from_network(model, train=True)

  def student(p, x, t, key, lam=None, labels=None):
    return base(p["net"], x, t, key, lam=lam, labels=labels)

  def target(p, x, t, key, lam=None, labels=None):
    # The probe only touches the eval-mode pass at u (the consistency
    # target): its gradient is zero iff that pass is stop-gradient.
    return student(p, x, t, key, lam, labels) * p["probe"]

  loss_fn = di4c.di4c_loss(student, teacher, proc, d, target=target)
  batch = {
    "tokens": jnp.asarray(exact.enumerate_states(3, 3)[:16], jnp.int32),
    "labels": jnp.zeros(16, jnp.int32),
  }
  full = {"net": params, "probe": jnp.ones(())}
  g_params, g_frozen = jax.jit(
    jax.grad(lambda p, f: loss_fn(p, batch, jax.random.key(0), f)[0], argnums=(0, 1))
  )(full, teacher.frozen)
  assert float(g_params["probe"]) == 0.0
  assert float(jnp.abs(g_frozen).max()) == 0.0
  assert float(optax_norm(g_params["net"])) > 0.0


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_loss_is_finite_and_reports_every_term():
  proc, probs, teacher, model, params, d = _tiny_setup(mode="separate")
  loss_fn = di4c.di4c_loss(denoisers.from_network(model, train=True), teacher, proc, d)
  batch = {"tokens": jnp.zeros((8, 3), jnp.int32), "labels": jnp.zeros(8, jnp.int32)}
  loss, m = jax.jit(lambda p: loss_fn(p, batch, jax.random.key(0), teacher.frozen))(params)
  assert np.isfinite(float(loss))
  assert {"distillation", "consistency", "marginal", "data_correlation", "frac_distill"} <= set(m)


@pytest.mark.parametrize("name", sorted(configuration.PRESETS))
def test_presets_time_sampling_and_gates(name):
  d = configuration.distill_preset(name)
  tm = jax.jit(lambda k: di4c.sample_times(k, 4096, d))(jax.random.key(0))
  t, u = np.asarray(tm["t"]), np.asarray(tm["u"])
  assert (u <= t).all() and (u >= 0).all() and (t <= 1).all()
  delta = t - u
  if name == "tauldr":
    assert (delta >= 1e-3 - 1e-7).all() and (delta <= 1e-2 + 1e-7).all()
    assert (t >= 0.01 + delta - 1e-6).all()
    assert (np.asarray(tm["w_distill"]) == 1).all() and (np.asarray(tm["w_consis"]) == 1).all()
    dt = np.asarray(tm["distill_t"])
    assert dt.shape == (4096, d.num_latents)  # a fresh delta per (example, latent)
    assert (dt >= 0.01).all() and (dt <= 0.02).all()
    # delta = 0.01 exactly with probability 1/2, else U[0.01, 0.02].
    n = dt.size
    assert abs(np.mean(dt == 0.01) - 0.5) < 4 * np.sqrt(0.25 / n)
    rest = dt[dt > 0.01]
    assert abs(rest.mean() - 0.015) < 4 * (0.01 / np.sqrt(12)) / np.sqrt(rest.size)
  elif name in ("maskgit", "cpu_small"):  # both: t per example, Delta = 0.05, threshold 0.05
    np.testing.assert_allclose(delta[t > 0.05], 0.05, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(tm["w_distill"]), (t < 0.05).astype(np.float32))
    # t (MaskGIT: r = 1 - t) ~ U[0, 1]: about 5 % of examples distil.
    assert abs(np.mean(t < 0.05) - 0.05) < 4 * np.sqrt(0.05 * 0.95 / len(t))
  else:
    assert len(np.unique(t)) == 1  # one t per batch
    np.testing.assert_allclose(delta, np.minimum(1 / 1024, t / 2), rtol=1e-4)
  np.testing.assert_allclose(
    np.asarray(tm["w_distill"]) + np.asarray(tm["w_consis"]), 2.0 if name == "tauldr" else 1.0
  )
  np.testing.assert_allclose(tm["alpha"], d.alpha_scale / (1 + np.exp(-20 * (t - 0.5))), rtol=1e-5)


def test_const_alpha_schedule_weighs_the_data_term_alike_at_every_t():
  """distill.alpha_schedule 'const': alpha_t = alpha_scale at every t, the times unchanged; a
  config saved before the field (no alpha_schedule) keeps the sigmoid; a wrong value names it."""
  d = configuration.distill_preset("cpu_small", alpha_schedule="const", alpha_scale=0.7)
  tm = di4c.sample_times(jax.random.key(0), 512, d)
  np.testing.assert_array_equal(np.asarray(tm["alpha"]), np.float32(0.7))
  old = configuration.distill_preset("cpu_small")
  ref = di4c.sample_times(jax.random.key(0), 512, old)
  np.testing.assert_array_equal(np.asarray(tm["t"]), np.asarray(ref["t"]))
  del old["alpha_schedule"]
  configuration.validate_distill(old)
  np.testing.assert_array_equal(
    np.asarray(di4c.sample_times(jax.random.key(0), 512, old)["alpha"]), np.asarray(ref["alpha"])
  )
  with pytest.raises(ValueError, match=r"config.distill.alpha_schedule.*sigmoid.*const"):
    configuration.validate_distill(configuration.distill_preset("cpu_small", alpha_schedule="flat"))


@pytest.mark.parametrize("mode", ["uniform", "per_batch"])
def test_top_t_prob_puts_that_share_of_times_at_one_and_keeps_the_rest(mode):
  """distill.top_t_prob p: each example's t (per_batch: the batch's) is exactly 1 with
  probability p (within 4 binomial SEs), every other t is the time law's own draw, bit for bit;
  p = 0 (the default, and configs saved before the field) changes nothing."""
  p = 0.25
  base = configuration.distill_preset("cpu_small", t_sampling=mode)
  base_ref = configuration.distill_preset("cpu_small", t_sampling=mode)
  top = configuration.distill_preset("cpu_small", t_sampling=mode, top_t_prob=p)
  n_keys, batch = 400, 64
  ones, total = 0, 0
  for i in range(n_keys):
    ref = np.asarray(di4c.sample_times(jax.random.key(i), batch, base)["t"])
    got = np.asarray(di4c.sample_times(jax.random.key(i), batch, top)["t"])
    moved = got != ref
    assert (got[moved] == 1.0).all()
    ones += int(moved.sum()) if mode == "uniform" else int(moved.any())
    total += batch if mode == "uniform" else 1
  assert abs(ones / total - p) < 4 * np.sqrt(p * (1 - p) / total), ones / total
  del base["top_t_prob"]
  configuration.validate_distill(base)
  fresh = configuration.distill_preset("cpu_small", t_sampling=mode)  # top_t_prob 0
  for cfg in (base, fresh):
    np.testing.assert_array_equal(
      np.asarray(di4c.sample_times(jax.random.key(0), batch, cfg)["t"]),
      np.asarray(di4c.sample_times(jax.random.key(0), batch, base_ref)["t"]),
    )
  with pytest.raises(ValueError, match=r"config.distill.top_t_prob"):
    configuration.validate_distill(configuration.distill_preset("cpu_small", top_t_prob=1.0))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0])
def test_data_term_is_a_mix_of_joint_and_marginal_cross_entropies(alpha):
  """Why alpha_schedule 'const' at alpha 1: with the posterior's own marginals as the teacher,
  E_{x0 ~ p}[alpha (-C(x0))] + sum_d KL(p_d || mbar_d), enumerated over all S^D states, is
  alpha CE(p, m) + (1 - alpha) sum_d CE(p_d, mbar_d) - sum_d H(p_d) for every mixture m (CE: the
  cross-entropy). For 0 <= alpha <= 1 both weights are >= 0, a proper score, and alpha = 1 is the
  joint's own; alpha > 1 rewards marginals away from the data's (the collapsed alpha_scale = 4
  student of the README)."""
  l, d, s = 4, 3, 3
  states = exact.enumerate_states(s, d)  # [M, D]
  m_count = len(states)
  p = np.asarray(jax.random.dirichlet(jax.random.key(8), jnp.ones(m_count)), np.float64)
  marg = np.stack([np.bincount(states[:, k], p, s) for k in range(d)])  # [D, S]
  teacher = jnp.asarray(np.log(np.repeat(marg[None], m_count, 0)), jnp.float32)
  entropies = -float(np.sum(marg * np.log(marg)))
  for seed in range(3):
    lp = random_log_probs(jax.random.key(20 + seed), 1, l, d, s)  # one mixture
    lp_rep = jnp.repeat(lp, m_count, 0)
    per_x = losses.data_correlation_term(
      lp_rep, jnp.asarray(states), jnp.full((m_count,), alpha)
    ) + losses.marginal_term(lp_rep, teacher)
    expected = float(np.sum(p * np.asarray(per_x, np.float64)))
    log_mix = np.asarray(losses.mixture_log_likelihood(lp, jnp.asarray(states)[None]), np.float64)
    joint_ce = -float(np.sum(p * log_mix[0]))
    mbar = np.asarray(losses.mixture_log_marginals(lp)[0], np.float64)  # [D, S]
    marg_ce = -float(np.sum(marg * mbar))
    want = alpha * joint_ce + (1 - alpha) * marg_ce - entropies
    np.testing.assert_allclose(expected, want, rtol=1e-5, atol=1e-4)


def test_sdtt_small_t_fraction():
  d = configuration.distill_preset("sdtt")
  ts = np.array([float(di4c.sample_times(jax.random.key(i), 2, d)["t"][0]) for i in range(2000)])
  frac = np.mean(ts < 0.02)
  assert abs(frac - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(ts))


def test_preset_errors():
  with pytest.raises(ValueError, match="preset"):
    configuration.distill_preset("mdlm")
  with pytest.raises(ValueError, match="num_latent"):
    configuration.distill_preset("sdtt", num_latent=3)
  with pytest.raises(ValueError, match="latent_chunks"):
    configuration.validate_distill(
      configuration.distill_preset("sdtt", num_latents=16, latent_chunks=3)
    )


def test_mixture_teacher_averages_component_probabilities():
  model = networks.Transformer(
    num_states=4, vocab_size=3, length=3, width=16, depth=1, heads=2, latent=True, mask_id=3
  )
  params = model.init(
    jax.random.key(0), jnp.zeros((1, 3), jnp.int32), jnp.zeros(1), lam=jnp.zeros(1)
  )["params"]
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(1), a.shape), params)
  teacher = di4c.network_teacher(model, params, latent_nodes=8)
  x = jnp.full((2, 3), 3, jnp.int32)
  t = jnp.array([0.5, 0.9])
  key = jax.random.key(4)
  got = teacher.denoise(params, x, t, key)
  offs = jax.random.uniform(key, (2, 1))
  lam = np.mod(np.asarray(offs) + np.arange(8) / 8, 1.0)
  for b in range(2):
    probs = [
      np.asarray(
        jax.nn.softmax(
          model.apply({"params": params}, x[b : b + 1], t[b : b + 1], lam=jnp.array([lam[b, j]]))
        )
      )[0]
      for j in range(8)
    ]
    np.testing.assert_allclose(np.exp(np.asarray(got[b])), np.mean(probs, 0), atol=1e-5)


@pytest.mark.parametrize("mode", ["same", "separate"])
def test_latent_micro_batching_gives_the_same_loss_and_gradients(mode):
  proc, probs, teacher, model, params, d = _tiny_setup(num_latents=8, mode=mode)
  batch = {
    "tokens": jnp.asarray(exact.enumerate_states(3, 3)[:12], jnp.int32),
    "labels": jnp.zeros(12, jnp.int32),
  }
  out = []
  for chunks in (1, 4):
    d.latent_chunks = chunks
    loss_fn = di4c.di4c_loss(denoisers.from_network(model, train=True), teacher, proc, d)
    (loss, m), g = jax.jit(
      jax.value_and_grad(
        lambda p: loss_fn(p, batch, jax.random.key(7), teacher.frozen), has_aux=True
      )
    )(params)
    out.append((float(loss), g))
  np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(configuration.PRESETS))
def test_teacher_marginal_term_is_on_at_every_t_in_every_preset(name, monkeypatch):
  """KL(teacher_t || mixture marginal_t) has weight 1 and a gradient at every
  t, with the data correlation term off (data_weight = 0, "di4c")."""
  proc, probs, teacher, model, params, _ = _tiny_setup()
  # The paper's presets default to di4c; cpu_small is di4c-d: switched off here.
  d = configuration.distill_preset(name, num_latents=4, data_weight=0.0)
  assert d.marginal_weight == 1.0
  loss_fn = di4c.di4c_loss(denoisers.from_network(model, train=True), teacher, proc, d)
  batch = {
    "tokens": jnp.asarray(exact.enumerate_states(3, 3)[:16], jnp.int32),
    "labels": jnp.zeros(16, jnp.int32),
  }
  orig = di4c.sample_times
  for t in (0.15, 0.5, 0.9):  # masked tokens exist (at t -> 0 the KL is 0 by carry-over)

    def times(key, b, d_, t=t):
      tm = orig(key, b, d_)
      # Every term switched off but the marginal anchor, at this t.
      return dict(
        tm,
        t=jnp.full((b,), t),
        u=jnp.full((b,), 0.9 * t),
        w_distill=jnp.zeros((b,)),
        w_consis=jnp.zeros((b,)),
      )

    monkeypatch.setattr(di4c, "sample_times", times)
    (loss, m), g = jax.value_and_grad(
      lambda p: loss_fn(p, batch, jax.random.key(0), teacher.frozen), has_aux=True
    )(params)
    np.testing.assert_allclose(float(loss), float(m["marginal"]), rtol=1e-5)
    assert float(m["marginal"]) > 1e-4, (name, t)
    assert float(optax_norm(g)) > 0.0, (name, t)


def test_mixture_teacher_steps_each_copy_with_its_own_latent(monkeypatch):
  """di4c^2: from one x_t, the teacher's step must keep the mixture teacher's
  correlations. With components that each put all their mass on ONE joint
  (all tokens 0, or all tokens 1), the averaged-marginals product step makes
  mixed states like (0, 1, 0); the true mixture step never does."""
  s, d = 2, 3
  proc = processes.Masked(s, "linear")

  def component(frozen, x, t, key, lam=None, labels=None):
    value = (lam > 0.5).astype(jnp.int32)  # the component's all-equal state
    return jnp.where(jax.nn.one_hot(value, s)[:, None, :] > 0, 0.0, -1e6) * jnp.ones((1, d, 1))

  def marginals(frozen, x, t, key, lam=None, labels=None):
    return jnp.log(jnp.full(x.shape + (s,), 0.5))

  teacher = di4c.Teacher(marginals, jnp.zeros(()), "two-point mixture", component)
  dconf = configuration.distill_preset(
    "sdtt",
    num_latents=64,
    t_sampling="uniform",
    delta="const",
    delta_lo=0.5,
    delta_hi=0.5,
    distill_threshold=0.0,
  )
  model = networks.Transformer(
    num_states=3,
    vocab_size=2,
    length=d,
    width=8,
    depth=1,
    heads=2,
    latent=True,
    mask_id=2,
    positions="learned",
  )
  params = model.init(
    jax.random.key(0), jnp.zeros((1, d), jnp.int32), jnp.zeros(1), lam=jnp.zeros(1)
  )["params"]
  seen = []

  student = denoisers.from_network(model)

  def target(p, x, t, key, lam=None, labels=None):
    seen.append(x)  # the pass at u sees the teacher's x_u
    return student(p, x, t, key, lam=lam)

  orig = di4c.sample_times
  # From t = 1 (every token masked) to u = 0.5.
  monkeypatch.setattr(
    di4c,
    "sample_times",
    lambda key, b, d_: dict(orig(key, b, d_), t=jnp.ones((b,)), u=jnp.full((b,), 0.5)),
  )
  loss_fn = di4c.di4c_loss(student, teacher, proc, dconf, target=target)
  batch = {"tokens": jnp.zeros((32, d), jnp.int32), "labels": jnp.zeros(32, jnp.int32)}
  loss_fn(params, batch, jax.random.key(1), teacher.frozen)
  x_u = np.asarray(seen[-1])
  revealed = np.where(x_u == 2, -1, x_u)
  has0, has1 = (revealed == 0).any(-1), (revealed == 1).any(-1)
  assert (revealed >= 0).sum() > 100  # the step revealed plenty of tokens
  assert not (has0 & has1).any()  # no copy mixes the two components
  assert has0.any() and has1.any()  # both components were used
