"""Tables of exact sampler error on tiny spaces (used by demos and benchmarks), and the
small networks trained on tiny families that the tests and benchmarks measure."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from mixture_dd import (
  configuration,
  denoisers,
  di4c,
  exact,
  processes,
  runs,
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


def distilled_tv_table(result, probs, steps, num_latent_nodes: int = 32) -> dict:
  """{"teacher": [TV at each N], "student": [...]} of a `distill.quick_distill`
  result on a tiny family with law `probs` `[S**D]`: its teacher (a product) and
  its mixture student, exactly (`tv_table`)."""
  s = result.setup
  fn_t = denoisers.exact_view(s.teacher.denoise, s.teacher.frozen)
  fn_s = denoisers.exact_view(denoisers.from_network(s.model), result.params)
  return tv_table(
    s.process,
    probs,
    s.spec.length,
    {"teacher": (fn_t, False), "student": (fn_s, True)},
    steps,
    num_latent_nodes,
  )


# ---------------------------------------------------------------------------
# Learned teachers and students on tiny families (tests, benchmarks/student_start).
# Built from configs (`configuration.base_config`, `distill_base_config`, their
# constructors) as a run of ours is, and trained by `trainer.fit_scanned`: in
# memory, no checkpoints, seconds on a CPU.
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


def tiny_teacher_config(
  s_vocab: int,
  length: int,
  width: int = 64,
  depth: int = 2,
  steps: int = 800,
  batch: int = 128,
  lr: float = 3e-3,
  seed: int = 0,
  schedule: str = "linear",
) -> ml_collections.ConfigDict:
  """A teacher config (`configuration.base_config`) for `train_tiny_teacher`: a
  small Transformer on a token array `[N, length]` over `s_vocab` values, the
  masked process with `schedule`."""
  c = configuration.base_config()
  c.seed = seed
  c.data = configuration.data_config(pipeline.ARRAY, vocab_size=s_vocab, length=length)
  c.process.update(name="masked", schedule=schedule)
  c.model.update(width=width, depth=depth, heads=4, positions="learned")
  c.optim.update(lr=lr, warmup_steps=50, ema_decay=0.99)
  c.train.update(batch_size=batch, num_steps=steps, sample_every=0)
  return c


def tiny_student_config(
  teacher_config,
  distill_section,
  steps: int = 400,
  batch: int = 32,
  lr: float = 1e-3,
  seed: int = 0,
  latent_lr_mult: float = 1.0,
) -> ml_collections.ConfigDict:
  """A distillation config (`configuration.distill_base_config`) for
  `distill_tiny_student`: the teacher config's data, process and network,
  the Di4C knobs `distill_section` (`configuration.distill_preset`)."""
  c = configuration.distill_base_config(distill_section.preset)
  c.seed = seed
  # The teacher is the network passed in (kind "user"): nothing on disk to resolve.
  c.teacher.kind = "user"
  c.distill = ml_collections.ConfigDict(distill_section.to_dict())
  for sec in ("data", "process", "model"):
    c[sec] = ml_collections.ConfigDict(teacher_config[sec].to_dict())
  c.optim.update(lr=lr, warmup_steps=20, schedule="cosine", latent_lr_mult=latent_lr_mult)
  c.train.update(batch_size=batch, num_steps=steps)
  return c


def _scanned_fit(config, params, loss_fn, source, vocab_size: int, frozen=None):
  """EMA parameters after config.train.num_steps steps of `trainer.fit_scanned`
  (no checkpoints) with config.optim and config.train's batch size."""
  steps = config.train.num_steps
  opt = train_step.make_optimizer(config.optim, steps)
  step = train_step.make_step(loss_fn, opt, config.optim.ema_decay, config.optim.ema_warmup)
  batcher = pipeline.make_batcher(
    source, config.train.batch_size, seed=config.seed, vocab_size=vocab_size
  )
  state, _ = trainer.fit_scanned(
    train_step.init_state(params, opt), step, batcher, steps, config.seed, frozen
  )
  return state.ema_params


def _array_setup(config, tokens):
  """(config with its data filled, spec, source, process) of a config on a token array."""
  data, spec, source = pipeline.array_source(config.data, tokens)
  config = ml_collections.ConfigDict(config.to_dict())
  config.data = data
  configuration.validate(config, spec)
  return config, spec, source, configuration.make_process(config, spec)


def train_tiny_teacher(config, tokens):
  """A product teacher (model, EMA params) trained on `tokens` `[N, D]` with the
  masked ELBO, as `tiny_teacher_config` (or any teacher config on an array) says."""
  config, spec, source, process = _array_setup(config, tokens)
  model = configuration.make_model(config, spec, process)
  loss_fn = teacher_training.teacher_loss_fn(config, model, process)
  params = train_step.init_params(model, config.seed)
  return model, _scanned_fit(config, params, loss_fn, source, spec.vocab_size)


def distill_tiny_student(config, tokens, teacher_model, teacher_params):
  """A Di4C student of a network teacher, copied from it as config.distill
  says and distilled on `tokens` `[N, D]` (config: `tiny_student_config`).
  Returns (model, params at step 0, trained EMA params)."""
  config, spec, source, process = _array_setup(runs.resolve(config), tokens)
  model = configuration.make_model(config, spec, process, latent=True)
  params = di4c.initial_student(model, config.distill, config.seed, teacher_params)
  teacher = di4c.network_teacher(teacher_model, teacher_params)
  loss_fn = di4c.student_loss(model, teacher, process, config.distill, config.model.label_dropout)
  trained = _scanned_fit(config, params, loss_fn, source, spec.vocab_size, teacher.frozen)
  return model, params, trained
