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


def _define_flags():
  """Only when run as a script: the tests import this module beside other benchmarks, whose
  flags (`--out`, `--seed` ...) would clash in one process."""
  flags.DEFINE_integer("window", 4, "W: consecutive chain states (S^W joint values).")
  flags.DEFINE_integer("vocab", 8, "S, the chain's states (the markov data set: 8).")
  flags.DEFINE_integer("chain_seed", 0, "The chain's seed (the markov data set: 0).")
  flags.DEFINE_list("latents", ["16", "64"], "Values of L.")
  flags.DEFINE_list("samplings", ["iid", "stratified"], "Latent samplings.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
  flags.DEFINE_integer("steps", 2000, "Adam steps.")
  flags.DEFINE_integer("batch", 64, "Windows per step.")
  flags.DEFINE_integer("grid", 8192, "Midpoint-grid latents for the exact mixture law.")
  flags.DEFINE_string("out", "reports/latent_sampling.md", "Markdown report path.")


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


def fit(states, p, vocab, num_l, stratified, seed, steps, batch, grid):
  """Fits the decoder by the L-sample likelihood: (its total correlation, its excess NLL)."""
  window = states.shape[1]
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
  for _ in range(steps):
    key, k = jax.random.split(key)
    x = jnp.asarray(states[rng.choice(len(p), batch, p=p)], jnp.int32)
    params, opt_state, _ = step(params, opt_state, x, k)
  grid = (jnp.arange(grid, dtype=jnp.float32) + 0.5) / grid
  lp = np.asarray(dec.apply(params, grid), np.float64)  # [G, W, S]
  comp = np.exp(sum(lp[:, k, states[:, k]] for k in range(window)))  # [G, S^W]
  q = comp.mean(0)
  q /= q.sum()
  return total_correlation(states, q, vocab), float(-(p * np.log(q)).sum()) - scorers.law_entropy(p)


def main(argv):
  del argv
  fl = flags.FLAGS
  init, trans = markov.make_chain(fl.vocab, fl.chain_seed)
  states, p = window_joint(init, trans, fl.window)
  tc_exact = total_correlation(states, p, fl.vocab)
  print(f"window {fl.window}: exact total correlation {tc_exact:.3f} nats", flush=True)
  rows = []
  configs = [(s, int(n)) for n in fl.latents for s in fl.samplings]
  t_start = time.time()
  for i, (sampling, num_l) in enumerate(configs):
    tcs, excess = [], []
    for seed in fl.seeds:
      t0 = time.time()
      tc, ex = fit(
        states, p, fl.vocab, num_l, sampling == "stratified", int(seed), fl.steps, fl.batch, fl.grid
      )
      tcs.append(tc)
      excess.append(ex)
      done = i * len(fl.seeds) + len(tcs)
      total = len(configs) * len(fl.seeds)
      eta = (time.time() - t_start) / done * (total - done)
      print(
        f"[{done}/{total}] {sampling} L={num_l} seed {seed}: TC {tc:.3f}, excess NLL {ex:.3f} "
        f"({time.time() - t0:.0f} s, ETA {eta:.0f} s)",
        flush=True,
      )
    rows.append((sampling, num_l, np.array(tcs), np.array(excess)))
  lines = [
    f"# Latent sampling: a scalar latent fitted to a {fl.window}-window of the chain",
    "",
    f"{datetime.date.today()}, {platform.machine()}, JAX {jax.__version__}; chain S = "
    f"{fl.vocab}, seed {fl.chain_seed}; {fl.steps} Adam steps of {fl.batch} "
    f"windows; seeds {','.join(fl.seeds)} (mean ± sd). Exact total correlation "
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
  os.makedirs(os.path.dirname(fl.out) or ".", exist_ok=True)
  with open(fl.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
