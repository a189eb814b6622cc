r"""Teacher train-step throughput and model FLOP utilisation (MFU).

For each config: build the teacher as `launch.train` would, time the jitted,
sharded train step (compile and warm-up excluded), and compare the model's
FLOP rate (3 x forward FLOPs per example x examples/s) with what a jitted
float32 2048x2048 matmul reaches on the same devices in the same run.

  python -m benchmarks.train_throughput [--configs=tiny,markov,digits,pydoc_text] \
      [--steps=10] [--out=reports/train_throughput.md]

A config is a name in mixture_dd.configs (`markov`, the file configs/markov.py), with an
optional parameter string (`digits:ci`).
"""

from __future__ import annotations

import datetime
import importlib
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import device_description
from mixture_dd import networks, sharding, teacher_training, train_step
from mixture_dd.data import pipeline

_CONFIGS = flags.DEFINE_list(
  "configs",
  ["tiny", "markov", "digits", "pydoc_text"],
  "Config names in mixture_dd.configs, optionally with ':param'.",
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed train steps per config.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_BATCH = flags.DEFINE_integer(
  "batch_size", None, "Override train.batch_size (default: the config's)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override data.data_dir for generated data.")
_OUT = flags.DEFINE_string("out", "reports/train_throughput.md", "Markdown report path.")


def load_config(name: str):
  """`get_config()` of mixture_dd.configs.<name>, or `get_config(param)` for 'name:param'."""
  name, _, param = name.partition(":")
  module = importlib.import_module("mixture_dd.configs." + name)
  return module.get_config(param) if param else module.get_config()


def _time(fn, reps: int) -> float:
  """Seconds per call of `fn` (which returns something to block on)."""
  t0 = time.perf_counter()
  for _ in range(reps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / reps


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
  """float32 n x n matmul rate (GFLOP/s): the device's attainable peak here."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  return 2.0 * n**3 / _time(lambda: f(a, b), reps) / 1e9


def bench_config(config, steps: int, warmup: int) -> dict:
  """Examples/s and model GFLOP/s of the config's teacher train step."""
  setup = teacher_training.setup_teacher(config)
  spec, source, model, loss_fn = setup.spec, setup.source, setup.model, setup.loss_fn
  batch_size = config.train.batch_size
  mesh = sharding.make_mesh()
  optimizer = train_step.make_optimizer(config.optim, config.train.num_steps)
  params = train_step.init_params(model, config.seed)
  state = sharding.replicate(train_step.init_state(params, optimizer), mesh)
  jstep = sharding.shard_step(
    train_step.make_step(loss_fn, optimizer, config.optim.ema_decay), mesh
  )
  batcher = pipeline.make_batcher(source, batch_size, seed=0, vocab_size=spec.vocab_size)
  # Batches go to the devices before timing: this measures the step, not the
  # host-side batching (which `fit` overlaps with the previous step anyway).
  batches = [sharding.global_batch(mesh, batcher.batch(i)) for i in range(min(steps, 4))]
  # The step's last argument is `frozen` (a distillation teacher's
  # parameters); a teacher has none.
  t0 = time.perf_counter()
  state, m = jstep(state, batches[0], jax.random.key(0), None)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(warmup):
    state, m = jstep(state, batches[i % len(batches)], jax.random.key(i), None)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = jstep(state, batches[i % len(batches)], jax.random.key(100 + i), None)
  jax.block_until_ready((state, m))
  step_s = (time.perf_counter() - t0) / steps
  examples_s = batch_size / step_s
  flops = networks.flops_per_example(model)
  return dict(
    params=networks.count_params(params),
    batch=batch_size,
    step_s=step_s,
    examples_s=examples_s,
    model_gflops=3.0 * flops * examples_s / 1e9,
    compile_s=compile_s,
    loss=float(m["loss"]),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  peak = matmul_gflops()
  rows = []
  for name in _CONFIGS.value:
    config = load_config(name)
    if _BATCH.value:
      config.train.batch_size = _BATCH.value
    if _DATA_DIR.value and "data_dir" in config.data:
      config.data.data_dir = _DATA_DIR.value
    r = bench_config(config, _STEPS.value, _WARMUP.value)
    print(
      f"{name}: {r['step_s']:.3f} s/step, {r['examples_s']:.1f} ex/s, "
      f"{r['model_gflops']:.1f} GFLOP/s (compile {r['compile_s']:.1f} s)",
      flush=True,
    )
    rows.append((name, r))
  # Re-measure the matmul after the models too: the ratio uses the better of
  # the two so a noisy first measurement cannot inflate MFU.
  peak = max(peak, matmul_gflops())
  lines = [
    "# Teacher train-step throughput",
    "",
    f"{datetime.datetime.now().isoformat(timespec='seconds')} on {device_description()}.",
    f"Timed {_STEPS.value} steps after {_WARMUP.value} warm-up steps (compilation excluded). "
    "Model GFLOP/s = 3 x `networks.flops_per_example` x examples/s (matmuls only); "
    "MFU = model GFLOP/s / float32 2048x2048 matmul GFLOP/s.",
    "",
    "| config | params | batch | s/step | examples/s | model GFLOP/s | matmul GFLOP/s | MFU |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in rows:
    lines.append(
      f"| {name} | {r['params']:,} | {r['batch']} | {r['step_s']:.3f} | "
      f"{r['examples_s']:.1f} | {r['model_gflops']:.1f} | {peak:.1f} | "
      f"{r['model_gflops'] / peak:.1%} |"
    )
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
