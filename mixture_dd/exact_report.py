"""Tables of exact sampler error on tiny spaces (used by demos and benchmarks)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from mixture_dd import exact, processes, samplers

# Two correlated families with full support, S = D = 3 (27 states), the
# masked process with the linear schedule on a uniform grid.
DEFAULT_CASES = (("dirichlet", 3, 3, 0), ("markov", 3, 3, 1))


def product_tv_curve(family, s_vocab, length, seed, steps, schedule="linear"):
  proc = processes.Masked(s_vocab, schedule)
  probs = exact.make_family(family, s_vocab, length, seed=seed)
  fn = jax.jit(lambda x, t: exact.ideal_log_marginals(proc, probs, length, x, t))
  tvs = []
  for n in steps:
    law, _ = exact.sampler_distribution(proc, lambda x, t, lam: fn(x, t), length,
                                        samplers.time_grid(n))
    tvs.append(exact.total_variation(probs, law))
  return np.array(tvs)


def fitted_slope(steps, tvs, min_steps=8):
  steps = np.asarray(steps)
  keep = steps >= min_steps
  return float(np.polyfit(np.log(steps[keep]), np.log(np.asarray(tvs)[keep]), 1)[0])


def product_tv_report(steps, out_path=None, cases=DEFAULT_CASES):
  """Markdown table of TV(N) for the exact ideal product sampler."""
  cols = [product_tv_curve(f, s, d, seed, steps) for f, s, d, seed in cases]
  head = "| N | " + " | ".join(f"TV {f} (S={s}, D={d}, seed {seed})" for f, s, d, seed in cases) + " |"
  lines = [
      "Exact TV between the data law and the N-step ideal product sampler",
      "(masked process, linear schedule, uniform grid).", "", head,
      "|---" * (len(cases) + 1) + "|"]
  for i, n in enumerate(steps):
    lines.append(f"| {n} | " + " | ".join(f"{c[i]:.5f}" for c in cols) + " |")
  lines.append("| slope of log TV vs log N (N >= 8) | "
               + " | ".join(f"{fitted_slope(steps, c):.3f}" for c in cols) + " |")
  text = "\n".join(lines)
  if out_path:
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
      f.write(text + "\n")
  return text


def network_log_marginals_fn(model, params, latent: bool):
  """Adapter: a network -> `fn(x [n, D], t, lam)` for `exact.sampler_distribution`."""
  @jax.jit
  def f(params, x, t, lam):
    n = x.shape[0]
    kw = {"lam": jnp.full((n,), lam, jnp.float32)} if latent else {}
    return jax.nn.log_softmax(model.apply({"params": params}, x, jnp.full((n,), t, jnp.float32), **kw))
  return lambda x, t, lam: f(params, jnp.asarray(x), t, 0.0 if lam is None else lam)


def tv_table(process, probs, length, denoisers: dict, steps, num_latent_nodes=32):
  """{name: [TV at each N]} for denoisers {name: (fn(x, t, lam), is_mixture)}."""
  out = {}
  for name, (fn, is_mix) in denoisers.items():
    out[name] = []
    for n in steps:
      law, _ = exact.sampler_distribution(process, fn, length, samplers.time_grid(n),
                                          num_latent_nodes=num_latent_nodes if is_mix else None)
      out[name].append(exact.total_variation(probs, law))
  return out
