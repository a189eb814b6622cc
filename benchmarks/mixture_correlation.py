r"""How much correlation a Di4C student's mixture expresses, against what the data's posterior has.

At each time t, x_t ~ q_t(. | x0) over test rows x0; the student's L components at x_t give a
mixture of products, whose total correlation TC = sum_d H(marginal_d) - H(joint) (nats per
sequence; 0 for a product, so for every product teacher) is estimated by sampling it
(`di4c.mixture_total_correlation`; a coupled student's L x L latent pairs on the cycle of its
A and B latents). Beside it: C(x0) of the data row (the correlation the
mixture credits the real x0 with; the di4c-d data term raises it) and, on the Markov data set,
the exact posterior p(x0 | x_t)'s TC by forward-backward
(`markov_exact.posterior_total_correlation`): the correlation an ideal joint denoiser would
express. Kept tokens of the masked process are pinned, so only masked positions count.

  python -m benchmarks.mixture_correlation --student_workdir=workdirs/markov_exact_student \
      --out=reports/mixture_correlation.md
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mixture_dd import categorical, denoisers, di4c, losses, markov_exact, networks, reports, runs
from mixture_dd.data import markov, pipeline


def _define_flags():
  """Only when run as a script: the tests import this module beside other benchmarks, whose
  flags (`--out`, `--seed` ...) would clash in one process."""
  flags.DEFINE_string("student_workdir", None, "A Di4C student run.", required=True)
  flags.DEFINE_string("out", "reports/mixture_correlation.md", "Table (.md; .json beside).")
  flags.DEFINE_list("times", ["1.0", "0.75", "0.5", "0.25", "0.1"], "Times t.")
  flags.DEFINE_integer("num_examples", 512, "Test rows x0 (one x_t each) per t.")
  flags.DEFINE_integer("num_latents", 0, "Components L per x_t (0: the run's own L).")
  flags.DEFINE_integer("num_draws", 64, "Draws of each mixture for its TC.")
  flags.DEFINE_integer("seed", 0, "Seed of x_t, latents and draws.")


def _mean_se(v) -> tuple[float, float]:
  v = np.asarray(v, np.float64)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def measure(run: runs.Run, times, num: int, num_latents: int, draws: int, seed: int) -> list[dict]:
  """One row per t: the student's TC, C of the data and (Markov data) the exact posterior's TC,
  each a per-example mean with its standard error."""
  _, test = pipeline.load(run.config.data, "test")
  x0 = jnp.asarray(test.tokens[:num], jnp.int32)
  labels = jnp.asarray(test.labels[:num], jnp.int32) if run.spec.num_classes else None
  b = x0.shape[0]
  component = denoisers.from_network(run.model)
  blocks = denoisers.latent_blocks(component)  # local latents: a product of block mixtures
  coupled = denoisers.latent_coupled(component)  # lp: its L x L latent pairs, on the cycle
  segments = None
  if coupled:
    segments = jnp.broadcast_to(networks.coupled_groups(x0.shape[1], blocks)[1], x0.shape)
  mask_id = run.process.mask_id
  chain = None
  if run.config.data.name == "markov":  # the chain the data set samples from
    chain = markov_exact.chain_params(*markov.make_chain(run.spec.vocab_size, run.config.data.seed))

  @jax.jit
  def at(key, t):
    k_x, k_lam, k_drop, k_tc = jax.random.split(key, 4)
    x_t = run.process.sample_xt(k_x, x0, jnp.full((b,), t))
    lam = denoisers.draw_latents(k_lam, (b, num_latents), denoisers.latent_dim(component))
    lp = di4c.component_log_probs(
      component,
      run.params,
      x_t,  # shared by the L latents (a local student runs its trunk once)
      jnp.full((b,), t),
      lam,
      labels,
      k_drop,
    )
    if mask_id is not None:  # a kept token is the sampler's, whatever the network says
      kept = (x_t != mask_id)[:, None, :, None]
      own = jnp.arange(lp.shape[-1]) == x_t[:, None, :, None]
      lp = jnp.where(kept, jnp.where(own, 0.0, categorical.NEG_INF), lp)
    out = {
      "student_tc": di4c.mixture_total_correlation(k_tc, lp, draws, blocks, coupled),
      "data_c": losses.correlation(lp, x0[:, None], None, blocks, segments, coupled)[:, 0],
    }
    if chain is not None:
      out["posterior_tc"] = markov_exact.posterior_total_correlation(run.process, chain, x_t, t, x0)
    return out

  rows, key = [], jax.random.key(seed)
  for i, t in enumerate(times):
    t0 = time.time()
    got = at(jax.random.fold_in(key, i), jnp.float32(t))
    row = {"t": t, "num_examples": b}
    for name, v in got.items():
      row[name], row[name + "_se"] = _mean_se(v)
    rows.append(row)
    print(f"t = {t}: {row} ({time.time() - t0:.1f} s)", flush=True)
  return rows


def main(argv):
  del argv
  fl = flags.FLAGS
  run = runs.load_run(fl.student_workdir)
  if not run.is_student:
    raise ValueError(
      f"{fl.student_workdir} is not a Di4C student run (a product has no correlation)"
    )
  num_latents = fl.num_latents or run.config.distill.num_latents
  times = [float(t) for t in fl.times]
  rows = measure(run, times, fl.num_examples, num_latents, fl.num_draws, fl.seed)
  exact = "posterior_tc" in rows[0]
  fmt = lambda r, k: f"{r[k]:.3f} ± {r[k + '_se']:.3f}"
  head = ["t", "student mixture TC", "C of the data x0"] + (
    ["exact posterior TC", "student / exact"] if exact else []
  )
  body = []
  for r in rows:
    cells = [f"{r['t']:g}", fmt(r, "student_tc"), fmt(r, "data_c")]
    if exact:
      cells += [fmt(r, "posterior_tc"), f"{r['student_tc'] / max(r['posterior_tc'], 1e-9):.3f}"]
    body.append(cells)
  lines = [
    f"Total correlation (nats per sequence, ± SE over {rows[0]['num_examples']} test rows, one "
    f"x_t each) of `{fl.student_workdir}` (step {run.step}), L = {num_latents}:",
    "",
    *reports.markdown_table(head, body),
  ]
  text = "\n".join(lines)
  print(text)
  reports.write_text_and_json(
    fl.out,
    text,
    dict(student=fl.student_workdir, step=run.step, num_latents=num_latents, rows=rows),
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main)
