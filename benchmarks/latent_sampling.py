r"""Can a scalar latent learn a known joint through the L-sample likelihood? iid or stratified.

The Di4C loss scores a mixture by the L-sample estimate log (1/L) sum_j p(x | lambda_j), which
is biased low by its variance. This isolates that estimator from everything else in
distillation: a decoder lambda -> W independent categoricals (the library's latent embedding,
then an MLP) is fitted by maximum likelihood to W consecutive states of the Markov data's chain
(its exact joint, from the stationary law), with the latents drawn by
`denoisers.draw_latents` iid or stratified (`config.distill.latent_sampling`) and scored by
`losses.mixture_log_likelihood`. The fitted mixture's exact law (the latent integrated on a
midpoint grid) gives its total correlation (what of the window's dependence it expresses;
the chain's own in the header) and its excess NLL on the true joint (0 = exact).

  python -m benchmarks.latent_sampling [--window=4] [--latents=16,64] \
      [--samplings=iid,stratified] [--seeds=0,1,2] [--steps=2000] [--out=reports/latent_sampling.md]
"""

from __future__ import annotations

import datetime
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from mixture_dd import denoisers, exact, losses, networks, scorers
from mixture_dd.data import markov

_WINDOW = flags.DEFINE_integer("window", 4, "W: consecutive chain states (S^W joint values).")
_VOCAB = flags.DEFINE_integer("vocab", 8, "S, the chain's states (the markov data set: 8).")
_CHAIN_SEED = flags.DEFINE_integer("chain_seed", 0, "The chain's seed (the markov data set: 0).")
_LATENTS = flags.DEFINE_list("latents", ["16", "64"], "Values of L.")
_SAMPLINGS = flags.DEFINE_list("samplings", ["iid", "stratified"], "Latent samplings.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Adam steps.")
_BATCH = flags.DEFINE_integer("batch", 64, "Windows per step.")
_GRID = flags.DEFINE_integer("grid", 8192, "Midpoint-grid latents for the exact mixture law.")
_OUT = flags.DEFINE_string("out", "reports/latent_sampling.md", "Markdown report path.")


class Decoder(nn.Module):
  """lambda `[n]` -> log-probs `[n, window, vocab]`."""

  window: int
  vocab: int
  width: int = 128

  @nn.compact
  def __call__(self, lam):
    h = networks.latent_embedding(lam)
    for _ in range(3):
      h = nn.silu(nn.Dense(self.width)(h))
    return jax.nn.log_softmax(
      nn.Dense(self.window * self.vocab)(h).reshape(-1, self.window, self.vocab)
    )


def window_joint(init, trans, window):
  """The exact law of `window` consecutive states from the stationary law: (states, p)."""
  pi = np.asarray(init, np.float64)
  for _ in range(1000):
    pi = pi @ trans
  states = exact.enumerate_states(len(pi), window)
  p = pi[states[:, 0]].copy()
  for k in range(1, window):
    p *= trans[states[:, k - 1], states[:, k]]
  return states, p / p.sum()


def total_correlation(states, q, vocab):
  marg = sum(
    scorers.law_entropy(np.bincount(states[:, k], q, vocab)) for k in range(states.shape[1])
  )
  return marg - scorers.law_entropy(q)


def fit(states, p, num_l, stratified, seed):
  window, vocab = states.shape[1], _VOCAB.value
  dec = Decoder(window, vocab)
  params = dec.init(jax.random.key(seed), jnp.zeros(2))
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)

  def loss(params, x, key):
    lam = denoisers.draw_latents(key, (x.shape[0], num_l), stratified=stratified)
    lp = dec.apply(params, lam.reshape(-1)).reshape(x.shape[0], num_l, window, vocab)
    return -jnp.mean(losses.mixture_log_likelihood(lp, x[:, None]))

  @jax.jit
  def step(params, opt_state, x, key):
    value, grads = jax.value_and_grad(loss)(params, x, key)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  rng = np.random.default_rng(seed)
  key = jax.random.key(seed + 1000)
  for _ in range(_STEPS.value):
    key, k = jax.random.split(key)
    x = jnp.asarray(states[rng.choice(len(p), _BATCH.value, p=p)], jnp.int32)
    params, opt_state, _ = step(params, opt_state, x, k)
  grid = (jnp.arange(_GRID.value, dtype=jnp.float32) + 0.5) / _GRID.value
  lp = np.asarray(dec.apply(params, grid), np.float64)  # [G, W, S]
  comp = np.exp(sum(lp[:, k, states[:, k]] for k in range(window)))  # [G, S^W]
  q = comp.mean(0)
  q /= q.sum()
  return total_correlation(states, q, vocab), float(-(p * np.log(q)).sum()) - scorers.law_entropy(p)


def main(argv):
  del argv
  init, trans = markov.make_chain(_VOCAB.value, _CHAIN_SEED.value)
  states, p = window_joint(init, trans, _WINDOW.value)
  tc_exact = total_correlation(states, p, _VOCAB.value)
  print(f"window {_WINDOW.value}: exact total correlation {tc_exact:.3f} nats", flush=True)
  rows = []
  configs = [(s, int(n)) for n in _LATENTS.value for s in _SAMPLINGS.value]
  t_start = time.time()
  for i, (sampling, num_l) in enumerate(configs):
    tcs, excess = [], []
    for seed in _SEEDS.value:
      t0 = time.time()
      tc, ex = fit(states, p, num_l, sampling == "stratified", int(seed))
      tcs.append(tc)
      excess.append(ex)
      done = i * len(_SEEDS.value) + len(tcs)
      total = len(configs) * len(_SEEDS.value)
      eta = (time.time() - t_start) / done * (total - done)
      print(
        f"[{done}/{total}] {sampling} L={num_l} seed {seed}: TC {tc:.3f}, excess NLL {ex:.3f} "
        f"({time.time() - t0:.0f} s, ETA {eta:.0f} s)",
        flush=True,
      )
    rows.append((sampling, num_l, np.array(tcs), np.array(excess)))
  lines = [
    f"# Latent sampling: a scalar latent fitted to a {_WINDOW.value}-window of the chain",
    "",
    f"{datetime.date.today()}, {platform.machine()}, JAX {jax.__version__}; chain S = "
    f"{_VOCAB.value}, seed {_CHAIN_SEED.value}; {_STEPS.value} Adam steps of {_BATCH.value} "
    f"windows; seeds {','.join(_SEEDS.value)} (mean ± sd). Exact total correlation "
    f"{tc_exact:.3f} nats; a product scores 0 and an excess NLL of {tc_exact:.3f}.",
    "",
    "| latents | L | total correlation (nats) | of the exact | excess NLL (nats) |",
    "|---|---|---|---|---|",
  ]
  for sampling, num_l, tcs, ex in rows:
    lines.append(
      f"| {sampling} | {num_l} | {tcs.mean():.3f} ± {tcs.std(ddof=1) if len(tcs) > 1 else 0:.3f} "
      f"| {tcs.mean() / tc_exact:.0%} | {ex.mean():.3f} ± {ex.std(ddof=1) if len(ex) > 1 else 0:.3f} |"
    )
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(text)


if __name__ == "__main__":
  app.run(main)
