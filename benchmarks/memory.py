r"""Peak memory of one compiled Di4C train step against the number of latents L.

For each L and each latent_chunks value, build the student, a product
network teacher (random weights: memory does not depend on their values),
the Di4C loss and the AdamW step exactly as `distill_and_evaluate` does,
compile it for one device and read XLA's own accounting
(`compiled.memory_analysis()`: temporaries, arguments, outputs). Nothing is
run, so it works on a CPU for sizes that would not fit.

  python -m benchmarks.memory [--latents=8,16,32,64] [--chunks=1,4] \
      [--width=128 --depth=2 --length=32 --vocab=8 --batch=32] [--out=reports/memory.md]

A chunk count that does not divide L is reported as n/a, as is every
chunked column if the loss has no `latent_chunks` support.
"""

from __future__ import annotations

import datetime
import os
import platform

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from mixture_dd import configuration, di4c, train_step
from mixture_dd.data import pipeline

_LATENTS = flags.DEFINE_list("latents", ["8", "16", "32", "64"], "Values of L.")
_CHUNKS = flags.DEFINE_list("chunks", ["1", "8"], "Values of config.distill.latent_chunks.")
_WIDTH = flags.DEFINE_integer("width", 128, "Model width.")
_DEPTH = flags.DEFINE_integer("depth", 2, "Model depth.")
_LENGTH = flags.DEFINE_integer("length", 32, "Sequence length D.")
_VOCAB = flags.DEFINE_integer("vocab", 8, "Vocabulary size S.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_PRESET = flags.DEFINE_string("preset", "sdtt", "Di4C preset (tauldr, maskgit, sdtt, cpu_small).")
_OUT = flags.DEFINE_string("out", "reports/memory.md", "Markdown report path.")

MIB = 1024.0**2


def _config(num_latents: int, chunks: int) -> ml_collections.ConfigDict:
  c = configuration.distill_base_config(_PRESET.value)
  c.process = ml_collections.ConfigDict(dict(name="masked", vocab_size=None, schedule="linear"))
  c.model = configuration.base_config().model
  c.model.update(width=_WIDTH.value, depth=_DEPTH.value, heads=4, positions="learned")
  c.distill.num_latents = num_latents
  c.distill.latent_chunks = chunks
  return c


def step_memory(num_latents: int, chunks: int) -> dict | None:
  """XLA's memory accounting of one Di4C train step, or None if unsupported."""
  if num_latents % chunks:
    return None
  c = _config(num_latents, chunks)
  configuration.validate_distill(c.distill)
  spec = pipeline.DataSpec("bench", _VOCAB.value, _LENGTH.value, 0, None, "tokens")
  process = configuration.make_process(c, spec)
  teacher_model = configuration.make_model(c, spec, process)
  student_model = configuration.make_model(c, spec, process, latent=True)
  teacher = di4c.network_teacher(teacher_model, train_step.init_params(teacher_model, 0))
  loss_fn = di4c.student_loss(student_model, teacher, process, c.distill)
  opt = train_step.make_optimizer(c.optim, 100)
  state = train_step.init_state(train_step.init_params(student_model, 0), opt)
  step = train_step.make_step(loss_fn, opt, c.optim.ema_decay)
  batch = {
    "tokens": jnp.zeros((_BATCH.value, _LENGTH.value), jnp.int32),
    "labels": jnp.zeros((_BATCH.value,), jnp.int32),
  }
  compiled = (
    jax.jit(step, donate_argnums=(0,))
    .lower(state, batch, jax.random.key(0), teacher.frozen)
    .compile()
  )
  m = compiled.memory_analysis()
  if m is None:
    return None
  temp = m.temp_size_in_bytes
  args, out, alias = m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes
  # XLA's CPU `peak_memory_in_bytes` leaves temporaries out; add them up.
  peak = max(temp + args + out - alias, getattr(m, "peak_memory_in_bytes", 0) or 0)
  return dict(temp=temp / MIB, peak=peak / MIB)


def _supports_chunks() -> bool:
  return "latent_chunks" in configuration.distill_preset("sdtt")


def main(argv):
  del argv
  latents = [int(v) for v in _LATENTS.value]
  chunks = [int(v) for v in _CHUNKS.value]
  if 1 not in chunks:
    chunks = [1] + chunks
  if any(v < 1 for v in latents + chunks):
    raise ValueError(f"--latents={latents} and --chunks={chunks} must be positive integers")
  chunked_ok = _supports_chunks()
  rows = []
  for num_l in latents:
    row = [str(num_l)]
    for ch in chunks:
      r = step_memory(num_l, ch) if (ch == 1 or chunked_ok) else None
      row.append("n/a" if r is None else f"{r['temp']:.1f} / {r['peak']:.1f}")
      print(f"L={num_l} chunks={ch}: {row[-1]} MiB (temp / peak)", flush=True)
    rows.append(row)
  head = ["L"] + [f"chunks={ch}: temp / peak MiB" for ch in chunks]
  lines = [
    "# Peak memory of one Di4C train step",
    "",
    f"{datetime.date.today()}, {platform.node()}, jax {jax.__version__}, backend "
    f"{jax.default_backend()} ({jax.devices()[0].device_kind}), one device. "
    f"Student and product teacher: width {_WIDTH.value}, depth {_DEPTH.value}; "
    f"D={_LENGTH.value}, S={_VOCAB.value}, batch {_BATCH.value}, preset {_PRESET.value}, "
    "float32, AdamW. From XLA's `compiled.memory_analysis()` (nothing executed): temp = "
    "temporary buffers, peak = temp + arguments + outputs - donated aliases (or XLA's peak "
    "if larger).",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ] + ["| " + " | ".join(r) + " |" for r in rows]
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
