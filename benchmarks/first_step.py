r"""The first sampling step in isolation: what a student's network can express at t = 1.

At t = 1 the posterior p(x0 | x_1) is the data's law itself (every token masked), which a
product sampler's one step cannot reach and a mixture student's can. This fits the network of
a distillation config to exactly that, with no teacher: a fresh network (random weights, the
config's latent start), every parameter trained by Adam on the L-sample mixture likelihood of
training rows x0 given x_1 (block by block for local latents, on the latent pairs' cycle for
coupled ones; the config's latent sampling),
and every `--eval_every` steps scores its one-step samples (one fresh latent per sequence)
with the chain's two-sided `pair_tv` (± bootstrap SE) beside the mixture's total correlation at
t = 1. A variant is the config with some fields changed, so an architecture lever is measured
here in minutes before a full distillation. Markov data only (its exact pair laws).

  python -m benchmarks.first_step --config=markov_exact_local_distill \
      --override=lp:model.latent_positions=learned --seeds=0,1 --out=reports/first_step.md
"""

import ast
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from mixture_dd import configuration, denoisers, di4c, losses, networks, reports, runs, scorers
from mixture_dd.data import markov, pipeline


def _define_flags():
  """Only when run as a script (see benchmarks.mixture_correlation)."""
  flags.DEFINE_string("config", "markov_exact_local_distill", "A module of mixture_dd.configs.")
  flags.DEFINE_multi_string(
    "override", [], "TAG:FIELD=VALUE: variant TAG of the config (repeatable, one field each)."
  )
  flags.DEFINE_list("seeds", ["0", "1"], "Seeds of the network, batches and latents.")
  flags.DEFINE_integer("steps", 400, "Adam steps.")
  flags.DEFINE_integer("batch", 16, "Rows x0 per step.")
  flags.DEFINE_float("lr", 1e-3, "Adam's learning rate.")
  flags.DEFINE_integer("eval_every", 100, "Steps between scores.")
  flags.DEFINE_integer("num_samples", 2048, "One-step samples per score.")
  flags.DEFINE_string("out", "reports/first_step.md", "Table (.md; .json beside).")


def variants(config_name: str, overrides: list[str]) -> dict:
  """{tag: config}: "config" as written, then one per TAG of `overrides` with its fields set."""
  import importlib  # pylint: disable=g-import-not-at-top

  make = importlib.import_module(f"mixture_dd.configs.{config_name}").get_config
  out = {"config": runs.resolve(make())}
  for spec in overrides:
    tag, _, assignment = spec.partition(":")
    field, eq, value = assignment.partition("=")
    if not (tag and field and eq) or tag == "config":
      raise ValueError(f"--override={spec!r}: expected TAG:FIELD=VALUE with TAG not 'config'")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a string
    conf = out.get(tag) or runs.resolve(make())
    conf.update_from_flattened_dict({field: value})
    out[tag] = conf
  return out


def fit(config, seed: int, steps: int, batch: int, lr: float, eval_every: int, num_samples: int):
  """Trains `config`'s student network on t = 1 alone; returns one row per evaluation (step 0,
  the start, then every `eval_every` steps and the last):
  {step, pair_tv, pair_tv_se, tc, tc_se, entropy_per_token, s_per_step}."""
  if config.data.name != "markov":
    raise ValueError(
      f"benchmarks.first_step scores with the Markov chain's exact pair laws; the config's data "
      f"is {config.data.name!r}. Use a Markov config (e.g. markov_exact_local_distill)."
    )
  spec, train = pipeline.load(config.data, "train")
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  model = configuration.make_model(config, spec, process, latent=True)
  comp = denoisers.from_network(model)
  blocks, k = denoisers.latent_blocks(comp), denoisers.latent_dim(comp)
  coupled = denoisers.latent_coupled(comp)
  # A coupled student's likelihood is scored on the cycle's segments (the fixed partition:
  # this benchmark draws no block offsets), as the loss does.
  segments = networks.coupled_groups(spec.length, blocks)[1] if coupled else None
  num_l = config.distill.num_latents
  stratified = config.distill.get("latent_sampling", "iid") == "stratified"
  init, trans = markov.make_chain(spec.vocab_size, config.data.seed)
  laws = scorers.markov_pair_laws(init, trans, spec.length)
  xs = np.asarray(train.tokens, np.int32)
  ones = lambda *shape: jnp.ones(shape, jnp.float32)

  def log_probs(params, key, x0):
    """[B, L, D, S] components at x_1 ~ q_1(. | x0) (all masked for the masked process); a
    coupled student's [B, L L, D, S] latent pairs, from one x_1 per row shared by its L
    latents (as in the loss: the pairs need one input)."""
    k_x, k_lam, k_c = jax.random.split(key, 3)
    b = x0.shape[0]
    lam = denoisers.draw_latents(k_lam, (b, num_l), k, stratified)
    if coupled:
      x1 = process.sample_xt(k_x, x0, ones(b))
      return di4c.component_log_probs(comp, params, x1, ones(b), lam, None, k_c)
    x1 = process.sample_xt(k_x, jnp.repeat(x0, num_l, 0), ones(b * num_l))
    x1 = x1.reshape(b, num_l, -1)
    return di4c.component_log_probs(comp, params, x1, ones(b, num_l), lam, None, k_c)

  def loss(params, key, x0):
    lp = log_probs(params, key, x0)
    groups = None if segments is None else jnp.broadcast_to(segments, x0.shape)
    return -jnp.mean(losses.mixture_log_likelihood(lp, x0[:, None], blocks, groups, coupled))

  opt = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, key, x0):
    value, grads = jax.value_and_grad(loss)(params, key, x0)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value

  @jax.jit
  def one_step_samples(params, key):
    k_x, k_lam, k_s = jax.random.split(key, 3)
    x1 = process.prior_sample(k_x, (num_samples, spec.length))
    lam = denoisers.draw_latents(k_lam, (num_samples,), k)
    logits = comp(params, x1, ones(num_samples), k_s, lam=lam)
    return jax.random.categorical(k_s, logits, -1)

  @jax.jit
  def total_correlation(params, key, x0):
    k_lp, k_tc = jax.random.split(key)
    lp = log_probs(params, k_lp, x0)
    tc = di4c.mixture_total_correlation(k_tc, lp, 64, blocks, coupled)
    return jnp.mean(tc), jnp.std(tc) / jnp.sqrt(tc.shape[0])

  params = di4c.initial_student(model, config.distill, seed)
  opt_state = opt.init(params)
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  rows, t0 = [], time.time()

  def score(i):
    samples = np.asarray(one_step_samples(params, jax.random.key(10_000 + i)))
    m = scorers.markov_metrics(samples, init, trans, laws)
    tc, tc_se = total_correlation(params, jax.random.key(20_000 + i), jnp.asarray(xs[:256]))
    rate = (time.time() - t0) / max(i, 1)
    rows.append(
      dict(
        step=i,
        pair_tv=m["pair_tv"],
        pair_tv_se=m["pair_tv_se"],
        entropy_per_token=m["entropy_per_token"],
        tc=float(tc),
        tc_se=float(tc_se),
        s_per_step=rate,
      )
    )
    print(
      f"seed {seed} step {i}/{steps}: pair_tv {m['pair_tv']:.4f} ± {m['pair_tv_se']:.4f}, "
      f"TC(t=1) {float(tc):.2f} nats ({rate:.2f} s/step, ETA {rate * (steps - i):.0f} s)",
      flush=True,
    )

  score(0)  # the start
  for i in range(1, steps + 1):
    key, k_step = jax.random.split(key)
    x0 = jnp.asarray(xs[rng.integers(0, len(xs), batch)])
    params, opt_state, value = step(params, opt_state, k_step, x0)
    if not np.isfinite(float(value)):
      raise FloatingPointError(f"seed {seed}: the t = 1 loss is {float(value)} at step {i}")
    if i % eval_every == 0 or i == steps:
      score(i)
  return rows


def main(argv):
  del argv
  fl = flags.FLAGS
  results = {}
  for tag, config in variants(fl.config, fl.override).items():
    for seed in [int(s) for s in fl.seeds]:
      rows = fit(config, seed, fl.steps, fl.batch, fl.lr, fl.eval_every, fl.num_samples)
      results[f"{tag}/{seed}"] = rows
  body = [
    [
      tag,
      seed,
      str(r["step"]),
      f"{r['pair_tv']:.4f} ± {r['pair_tv_se']:.4f}",
      f"{r['tc']:.2f} ± {r['tc_se']:.2f}",
      f"{r['entropy_per_token']:.3f}",
    ]
    for name, rows in results.items()
    for tag, seed in [name.split("/")]
    for r in rows
  ]
  head = ["variant", "seed", "step", "one-step pair_tv", "TC at t = 1 (nats)", "entropy per token"]
  overrides = ", ".join(f"`{o}`" for o in fl.override) or "none"
  text = "\n".join(
    [
      f"One-step samples of `{fl.config}`'s student network trained on t = 1 alone ({fl.steps} "
      f"Adam steps of {fl.batch} rows, lr {fl.lr}; {fl.num_samples} samples per score; "
      f"overrides: {overrides}):",
      "",
      *reports.markdown_table(head, body),
    ]
  )
  print(text)
  reports.write_text_and_json(fl.out, text, results, indent=1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
