"""Tables of exact sampler error on tiny spaces (used by demos and benchmarks)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixture_dd import (
  configuration,
  di4c,
  exact,
  losses,
  networks,
  processes,
  samplers,
  teacher_training,
  train_step,
  trainer,
)
from mixture_dd.data import pipeline

# Two correlated families with full support, S = D = 3 (27 states), the
# masked process with the linear schedule on a uniform grid.
DEFAULT_CASES = (("dirichlet", 3, 3, 0), ("markov", 3, 3, 1))


def product_tv_curve(family, s_vocab, length, seed, steps, schedule="linear"):
  proc = processes.Masked(s_vocab, schedule)
  probs = exact.make_family(family, s_vocab, length, seed=seed)
  fn = jax.jit(lambda x, t: exact.ideal_log_marginals(proc, probs, length, x, t))
  tvs = []
  for n in steps:
    law, _ = exact.sampler_distribution(
      proc, lambda x, t, lam: fn(x, t), length, samplers.time_grid(n)
    )
    tvs.append(exact.total_variation(probs, law))
  return np.array(tvs)


def fitted_slope(steps, tvs, min_steps=8):
  steps = np.asarray(steps)
  keep = steps >= min_steps
  return float(np.polyfit(np.log(steps[keep]), np.log(np.asarray(tvs)[keep]), 1)[0])


def product_tv_report(steps, out_path=None, cases=DEFAULT_CASES):
  """Markdown table of TV(N) for the exact ideal product sampler."""
  cols = [product_tv_curve(f, s, d, seed, steps) for f, s, d, seed in cases]
  head = (
    "| N | " + " | ".join(f"TV {f} (S={s}, D={d}, seed {seed})" for f, s, d, seed in cases) + " |"
  )
  lines = [
    "Exact TV between the data law and the N-step ideal product sampler",
    "(masked process, linear schedule, uniform grid).",
    "",
    head,
    "|---" * (len(cases) + 1) + "|",
  ]
  for i, n in enumerate(steps):
    lines.append(f"| {n} | " + " | ".join(f"{c[i]:.5f}" for c in cols) + " |")
  lines.append(
    "| slope of log TV vs log N (N >= 8) | "
    + " | ".join(f"{fitted_slope(steps, c):.3f}" for c in cols)
    + " |"
  )
  text = "\n".join(lines)
  if out_path:
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w") as f:
      f.write(text + "\n")
  return text


def network_log_marginals_fn(model, params, latent: bool):
  """Adapter: a network -> `fn(x [n, D], t, lam)` for `exact.sampler_distribution`
  (lam a float, or a `[k]` point for a student with latent_dim k > 1; the
  adapter's `latent_dim` attribute is the model's)."""

  @jax.jit
  def f(params, x, t, lam):
    n = x.shape[0]
    kw = {"lam": jnp.broadcast_to(lam, (n,) + lam.shape)} if latent else {}
    return jax.nn.log_softmax(
      model.apply({"params": params}, x, jnp.full((n,), t, jnp.float32), **kw)
    )

  def fn(x, t, lam):
    lam = np.asarray(0.0 if lam is None else lam, np.float32)
    return f(params, jnp.asarray(x), t, lam)

  fn.latent_dim = model.latent_dim if latent else 1
  return fn


def tv_table(process, probs, length, denoisers: dict, steps, num_latent_nodes=32):
  """{name: [TV at each N]} for denoisers {name: (fn(x, t, lam), is_mixture)}.

  A mixture's lambda is integrated with `num_latent_nodes` nodes in all
  (`exact.latent_nodes`); its latent_dim is `fn.latent_dim` (1 if absent).
  """
  out = {}
  for name, (fn, is_mix) in denoisers.items():
    out[name] = []
    for n in steps:
      times, _ = samplers.schedule(process, n)
      law, _ = exact.sampler_distribution(
        process,
        fn,
        length,
        times,
        final="argmax",
        num_latent_nodes=num_latent_nodes if is_mix else None,
      )
      out[name].append(exact.total_variation(probs, law))
  return out


# ---------------------------------------------------------------------------
# Learned teachers and students on tiny families (tests, benchmarks).
# ---------------------------------------------------------------------------


def tiny_case(
  family: str,
  s_vocab: int,
  length: int,
  seed: int,
  num_train: int = 20000,
  schedule: str = "linear",
):
  """(probs `[S**D]`, train tokens `[num_train, D]` drawn from them, masked process)."""
  probs = exact.make_family(family, s_vocab, length, seed)
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(probs), size=num_train, p=probs / probs.sum())
  tokens = exact.enumerate_states(s_vocab, length)[idx].astype(np.int32)
  return probs, tokens, processes.Masked(s_vocab, schedule)


def tiny_optim(lr: float, warmup: int = 20, latent_lr_mult: float = 1.0):
  return ml_collections.ConfigDict(
    dict(
      lr=lr,
      warmup_steps=warmup,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      clip=1.0,
      schedule="cosine",
      latent_lr_mult=latent_lr_mult,
    )
  )


def train_tiny_teacher(
  process,
  tokens,
  width: int = 64,
  depth: int = 2,
  steps: int = 800,
  batch: int = 128,
  lr: float = 3e-3,
  seed: int = 0,
):
  """A product teacher (model, EMA params) trained on `tokens` with the masked ELBO."""
  model = networks.Transformer(
    num_states=process.num_states,
    vocab_size=process.vocab_size,
    length=tokens.shape[1],
    width=width,
    depth=depth,
    heads=4,
    positions="learned",
    mask_id=process.mask_id,
  )
  denoise = teacher_training.teacher_denoiser(model)

  def loss_fn(params, b, key, frozen=None):
    return losses.teacher_loss(denoise, params, process, b["tokens"], key)

  opt = train_step.make_optimizer(tiny_optim(lr, 50), steps)
  state = train_step.init_state(train_step.init_params(model, seed), opt)
  batcher = pipeline.Batcher(tokens, None, batch, seed=seed)
  state, _ = trainer.fit_scanned(
    state, train_step.make_step(loss_fn, opt, 0.99), batcher, steps, seed
  )
  return model, state.ema_params


def distill_tiny_student(
  process,
  tokens,
  teacher_model,
  teacher_params,
  dconf,
  steps: int = 400,
  batch: int = 32,
  lr: float = 1e-3,
  seed: int = 0,
  latent_lr_mult: float = 1.0,
):
  """A Di4C student of a network teacher: (model, params at step 0, trained EMA params)."""
  entry = configuration.entry_for_start(dconf.student_start)
  model = teacher_model.clone(latent=True, latent_entry=entry)
  params = di4c.initial_student(model, dconf, seed, teacher_params)
  teacher = di4c.network_teacher(teacher_model, teacher_params)
  loss_fn = di4c.student_loss(model, teacher, process, dconf)
  opt = train_step.make_optimizer(tiny_optim(lr, latent_lr_mult=latent_lr_mult), steps)
  state = train_step.init_state(params, opt)
  batcher = pipeline.Batcher(tokens, None, batch, seed=seed)
  state, _ = trainer.fit_scanned(
    state, train_step.make_step(loss_fn, opt, 0.99), batcher, steps, seed, teacher.frozen
  )
  return model, params, state.ema_params
