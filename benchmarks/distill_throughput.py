r"""Distillation-step time of local-latent students: the trunk run once for an example's L
latents (`Transformer(shared_trunk=True)`, what the Di4C loss does) against L copies of x_t
(what it did before), both timed in one run on the same devices.

For each distillation config: its student and loss as `launch.distill` builds them, with a
fresh teacher network of the config's architecture (or the config's exact teacher), the
jitted, sharded train step (Adam, EMA: the whole step) timed after compilation and warm-up,
once with each loss. The loss values of the two agree (printed); the ratio is the speed-up.
A coupled student (model.latent_coupling "halves") has no L-copy path: only its shared step is
timed, beside the local configs' in the same run (what the coupling costs).

  python -m benchmarks.distill_throughput \
      [--configs=markov_exact_local_distill,markov_local_distill:markov,pydoc_text_local_distill:pydoc_text] \
      [--steps=10] [--out=reports/distill_throughput.md]

A config is a module of mixture_dd.configs, with `:TEACHER` (the teacher's training config)
where its teacher is a network run.
"""

from __future__ import annotations

import datetime
import importlib
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import device_description
from mixture_dd import configuration, denoisers, di4c, reports, runs, sharding, train_step
from mixture_dd.data import pipeline

_CONFIGS = flags.DEFINE_list(
  "configs",
  [
    "markov_exact_local_distill",
    "markov_local_distill:markov",
    "pydoc_text_local_distill:pydoc_text",
  ],
  "Distillation configs in mixture_dd.configs, with ':TEACHER' for a network teacher.",
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per loss.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_OUT = flags.DEFINE_string("out", "reports/distill_throughput.md", "Markdown report (json beside).")


def _module(name: str):
  return importlib.import_module("mixture_dd.configs." + name).get_config()


def setup(spec_name: str):
  """(config, data source, student model, teacher, student params, process) for 'config[:teacher]'."""
  name, _, teacher_name = spec_name.partition(":")
  config = _module(name)
  tconf = None
  if config.teacher.kind == "network":
    if not teacher_name:
      raise ValueError(
        f"{name} distils a network teacher: name its training config, {name}:TEACHER"
      )
    tconf = _module(teacher_name)
    config.teacher.workdir = f"(fresh {teacher_name} network)"
  config = runs.resolve(config, tconf)
  spec, source = pipeline.load(config.data, "train")
  configuration.validate(config, spec)
  process = configuration.make_process(config, spec)
  model = configuration.make_model(config, spec, process, latent=True)
  if tconf is None:
    teacher, t_params = runs.ideal_teacher_of(config, spec, process), None
  else:
    t_model = configuration.make_model(config, spec, process, latent=False)
    t_params = train_step.init_params(t_model, config.seed)
    teacher = di4c.network_teacher(t_model, t_params)
  params = di4c.initial_student(model, config.distill, config.seed, t_params)
  return config, spec, source, model, teacher, params, process


def time_step(loss_fn, config, spec, source, params, teacher, steps: int, warmup: int) -> dict:
  """Seconds per train step of `loss_fn` (compile and warm-up excluded), its first loss."""
  mesh = sharding.make_mesh()
  optimizer = train_step.make_optimizer(config.optim, config.train.num_steps)
  # A copy: the step donates its state, and the other loss starts from the same params.
  params = jax.tree.map(jnp.copy, params)
  state = sharding.replicate(train_step.init_state(params, optimizer), mesh)
  jstep = sharding.shard_step(
    train_step.make_step(loss_fn, optimizer, config.optim.ema_decay), mesh
  )
  batcher = pipeline.make_batcher(
    source, config.train.batch_size, seed=0, vocab_size=spec.vocab_size
  )
  batches = [sharding.global_batch(mesh, batcher.batch(i)) for i in range(4)]
  frozen = sharding.replicate(teacher.frozen, mesh)
  t0 = time.perf_counter()
  state, m = jstep(state, batches[0], jax.random.key(0), frozen)
  loss0 = float(m["loss"])
  compile_s = time.perf_counter() - t0
  for i in range(warmup):
    state, m = jstep(state, batches[i % 4], jax.random.key(1 + i), frozen)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = jstep(state, batches[i % 4], jax.random.key(100 + i), frozen)
  jax.block_until_ready((state, m))
  return dict(step_s=(time.perf_counter() - t0) / steps, compile_s=compile_s, loss0=loss0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  rows, payload = [], []
  for spec_name in _CONFIGS.value:
    config, spec, source, model, teacher, params, process = setup(spec_name)
    if denoisers.latent_blocks(denoisers.from_network(model)) == 1:
      raise ValueError(f"{spec_name}: not a local-latent student (nothing to share)")
    shared = di4c.student_loss(model, teacher, process, config.distill)
    args = (config, spec, source, params, teacher, _STEPS.value, _WARMUP.value)
    r_c = None
    if not model.coupled:
      copies = di4c.di4c_loss(
        denoisers.without_components(denoisers.from_network(model, train=True)),
        teacher,
        process,
        config.distill,
        target=denoisers.from_network(model),
      )
      r_c = time_step(copies, *args)
    r_s = time_step(shared, *args)
    r = dict(
      config=spec_name,
      batch=config.train.batch_size,
      num_latents=config.distill.num_latents,
      copies=r_c,
      shared=r_s,
      speedup=None if r_c is None else r_c["step_s"] / r_s["step_s"],
    )
    fmt = lambda v, f: "-" if v is None else format(v, f)
    print(
      f"{spec_name}: L copies {fmt(r_c and r_c['step_s'], '.3f')} s/step, shared trunk "
      f"{r_s['step_s']:.3f} s/step ({fmt(r['speedup'], '.2f')}x); first loss "
      f"{fmt(r_c and r_c['loss0'], '.6f')} / {r_s['loss0']:.6f}",
      flush=True,
    )
    payload.append(r)
    rows.append(
      [
        spec_name,
        str(r["batch"]),
        str(r["num_latents"]),
        fmt(r_c and r_c["step_s"], ".3f"),
        f"{r_s['step_s']:.3f}",
        fmt(r["speedup"], ".2f") + ("" if r_c is None else "x"),
        f"{fmt(r_c and r_c['loss0'], '.6f')} / {r_s['loss0']:.6f}",
      ]
    )
  lines = [
    "# Distillation step: the trunk once per example against L copies",
    "",
    f"{datetime.datetime.now().isoformat(timespec='seconds')} on {device_description()}.",
    f"The whole train step (loss, gradient, Adam, EMA), timed over {_STEPS.value} steps after "
    f"{_WARMUP.value} warm-up steps, compilation excluded; the same batches, keys and start "
    "for both losses. `python -m benchmarks.distill_throughput`.",
    "",
    *reports.markdown_table(
      [
        "config",
        "batch",
        "L",
        "L copies s/step",
        "shared trunk s/step",
        "speed-up",
        "first loss (copies / shared)",
      ],
      rows,
    ),
  ]
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    reports.write_text_and_json(_OUT.value, text, payload, indent=1)


if __name__ == "__main__":
  app.run(main)
