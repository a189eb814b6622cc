r"""Accelerator benchmark at the full-size shapes: train steps, sampling latency, memory.

  python -m benchmarks.accelerator [--mode=small|full] [--out=reports/accelerator.md] \
      [--workloads=pixel,text,maskgit] [--reps=5] [--matmul_n=8192]

Three workloads, on synthetic random tokens and random weights (nothing is downloaded,
trained or loaded):

  pixel CTMC    configs/cifar10_gaussian.py teacher, configs/cifar10_tauldr_distill.py:
                32x32x3 = 3072 tokens, 256 levels, the Gaussian-rate CTMC
  masked text   configs/text8_masked.py teacher, configs/text8_sdtt_distill.py:
                256 tokens, 27 symbols, masked (log-linear)
  MaskGIT-like  configs/maskgit.py teacher, configs/maskgit_distill.py:
                256 tokens, 1024 codes, 1000 classes, masked (arccos)

For each it measures, on one device: the teacher train step (examples/s, MFU), the Di4C
distillation step (student passes/s = B x L, MFU), the time per sampling step of the
teacher and of the mixture student at N = 4 and 8 and their ratio (the student's latency
overhead, goal <= 5 %), XLA's memory accounting of both steps and the device's peak
memory. It prints one markdown table and writes it to --out, with every number in a JSON
next to it (same name, .json).

MFU = model FLOPs per step / step time / matmul rate, against both a bf16 and a float32
n x n matmul (default precision) timed on the same device in the same run (the best of
its calls before and after the workloads). Model FLOPs come from XLA's HLO cost analysis
of the lowered, loop-free step program (`jax.jit(step).lower(...).cost_analysis()
["flops"]`: what the program asks for, before XLA's rewrites). In JAX 0.10.2 this is a
dict, for the lowered and the compiled program alike, and both count the body of a while
loop once whatever its trip count, so the Di4C step is counted with latent_chunks=1 (the
same arithmetic without the lax.map and its rematerialisation), and the compiled count of
the chunked step that runs would be too low. If the lowered count is unavailable, the
compiled loop-free program's is used, else the analytic 3 x `networks.flops_per_example`
per trained pass (1x per forward-only pass). The table names the source.

Every program is lowered and compiled (in parallel threads) before anything is timed.
Timings exclude compilation and one warm-up call; each call is blocked on; median of
--reps calls. --mode (default: small on a CPU backend, else full):
  small  every model shrunk (width 32, depth 1, 2 heads; L = 4 latents in 2 chunks),
         short sequences, batch 8 (Di4C: 2), the configs' vocabularies, processes,
         presets and dtypes: every code path in a minute on a CPU (the tests run it on the
         pixel and MaskGIT workloads).
         On a CPU it compiles with `FAST_CPU_COMPILE` (several times faster to compile,
         slower to run: a smoke test, not a measurement).
  full   the configs' models and dtypes with the batch sizes in `WORKLOADS`, smaller
         than the configs' where one device's memory demands it (the attention is
         materialised, [heads, D, D] per example and layer). A step that runs out of
         device memory is retried at half the batch; the table shows the batch that ran.
Run as a program, it lets XLA take 95 % of the accelerator's memory
(XLA_PYTHON_CLIENT_MEM_FRACTION, unless set).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import importlib
import json
import logging
import math
import os
import platform
import re
import statistics
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixture_dd import (
  configuration,
  denoisers,
  di4c,
  networks,
  samplers,
  sharding,
  teacher_training,
  train_step,
)
from mixture_dd.data import pipeline

log = logging.getLogger("mixture_dd")

MODES = ("small", "full")
GIB = 1024.0**3
SAMPLE_STEPS = (4, 8)


# ---------------------------------------------------------------------------
# Workloads.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
  key: str
  title: str
  teacher_config: str  # configs/<name>.py
  distill_config: str
  vocab: int
  length: int
  classes: int
  teacher_batch: int  # full mode
  distill_batch: int  # full mode
  latent_chunks: int | None  # full mode; None keeps the config's
  sample_batch: int  # full mode
  small_length: int


# Full-mode batches are for one ~140 GB device (an H200), with the configs' latent_chunks
# unless set here. Pixel: D = 3072 makes the materialised attention cost about 8 GB of
# activations per example and trained pass, so a few examples fit (the configs' 128 would
# need many devices). Text and MaskGIT: about 0.3 and 0.6 GB per example.
WORKLOADS = (
  Workload(
    key="pixel",
    title="pixel CTMC",
    teacher_config="cifar10_gaussian",
    distill_config="cifar10_tauldr_distill",
    vocab=256,
    length=3072,
    classes=0,
    teacher_batch=8,
    distill_batch=2,
    latent_chunks=8,
    sample_batch=16,
    small_length=48,
  ),
  Workload(
    key="text",
    title="masked text",
    teacher_config="text8_masked",
    distill_config="text8_sdtt_distill",
    vocab=27,
    length=256,
    classes=0,
    teacher_batch=256,
    distill_batch=32,
    latent_chunks=None,
    sample_batch=128,
    small_length=32,
  ),
  Workload(
    key="maskgit",
    title="MaskGIT-like",
    teacher_config="maskgit",
    distill_config="maskgit_distill",
    vocab=1024,
    length=256,
    classes=1000,
    teacher_batch=64,
    distill_batch=8,
    latent_chunks=None,
    sample_batch=64,
    small_length=16,
  ),
)
WORKLOAD_KEYS = tuple(w.key for w in WORKLOADS)


@dataclasses.dataclass
class Setup:
  """Everything one workload needs, built from its configs."""

  workload: Workload
  teacher_config: ml_collections.ConfigDict
  student_config: ml_collections.ConfigDict
  spec: Any
  process: Any
  teacher_model: networks.Transformer
  student_model: networks.Transformer
  teacher_batch: int
  distill_batch: int
  sample_batch: int
  abstract: dict  # "teacher" / "student": the parameters' shapes


def build(w: Workload, mode: str) -> Setup:
  tconf = importlib.import_module("mixture_dd.configs." + w.teacher_config).get_config()
  dconf = importlib.import_module("mixture_dd.configs." + w.distill_config).get_config()
  length = w.length if mode == "full" else w.small_length
  spec = pipeline.DataSpec(f"bench_{w.key}", w.vocab, length, w.classes, None, "tokens")
  if mode == "small":
    tconf.model.update(width=32, depth=1, heads=2)
  configuration.validate(tconf, spec)
  # The student: the teacher's config with the distillation file's overrides.
  sconf = ml_collections.ConfigDict(tconf.to_dict())
  if dconf.get("model") is not None:
    sconf.model.update(dconf.model.to_dict())
  sconf.distill = dconf.distill
  sconf.optim = dconf.optim
  sconf.train = dconf.train
  if mode == "small":
    sconf.distill.update(num_latents=4, latent_chunks=2)
  elif w.latent_chunks is not None:
    sconf.distill.latent_chunks = w.latent_chunks
  configuration.validate(sconf, spec)
  process = configuration.make_process(tconf, spec)
  teacher_model = configuration.make_model(tconf, spec, process)
  student_model = configuration.make_model(sconf, spec, process, latent=True)
  if mode == "full":
    batches = (w.teacher_batch, w.distill_batch, w.sample_batch)
  else:
    batches = (8, 2, 8)
  abstract = {
    "teacher": jax.eval_shape(lambda: train_step.init_params(teacher_model, 0)),
    "student": jax.eval_shape(lambda: train_step.init_params(student_model, 0)),
  }
  return Setup(w, tconf, sconf, spec, process, teacher_model, student_model, *batches, abstract)


# ---------------------------------------------------------------------------
# Measuring.
# ---------------------------------------------------------------------------


def one_device_mesh():
  """A one-device mesh with train's axis name: per-device numbers whatever the host has."""
  return jax.make_mesh(
    (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
  )


def median_time(fn: Callable, reps: int, warmup: int = 1) -> float:
  """Median seconds of `fn()` (blocked on) over `reps` calls after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_rate(dtype, n: int, reps: int) -> float:
  """FLOP/s of the best of `reps` jitted n x n matmuls in `dtype` (default precision)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul).lower(a, b).compile()
  jax.block_until_ready(f(a, b))
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


def random_params(abstract, scale: float = 0.02):
  """Parameters of the given shapes on the default device: N(0, scale^2) entries (slices
  of one draw; values do not change the timings), without compiling the model's init."""
  leaves, treedef = jax.tree.flatten(abstract)
  size = max((math.prod(a.shape) for a in leaves), default=0)
  base = scale * np.random.default_rng(0).standard_normal(size, dtype=np.float32)
  return jax.tree.unflatten(
    treedef,
    [jax.device_put(base[: math.prod(a.shape)].reshape(a.shape).astype(a.dtype)) for a in leaves],
  )


def _key_abs():
  return jax.eval_shape(lambda: jax.random.key(0))


def _batch(spec, batch: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "tokens": rng.integers(0, spec.vocab_size, (batch, spec.length), dtype=np.int32),
    "labels": rng.integers(0, max(spec.num_classes, 1), (batch,), dtype=np.int32),
  }


def _abstract_batch(spec, batch: int) -> dict:
  return {
    "tokens": jax.ShapeDtypeStruct((batch, spec.length), jnp.int32),
    "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
  }


_FUNC = re.compile(r"func\.func (?:public |private )?@([\w.$-]+)")


def _has_loop(lowered) -> bool:
  """Whether the program has a while loop (whose body XLA's cost analysis counts once),
  other than the few-round loops of the threefry random-bit generator (a CPU lowering)."""
  try:
    text = lowered.as_text()
  except Exception:  # noqa: BLE001 - unknown: treat as looped, never undercount silently
    return True
  starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(text)] + [(len(text), "")]
  for (lo, name), (hi, _) in zip(starts, starts[1:], strict=False):
    if "stablehlo.while" in text[lo:hi] and "threefry" not in name:
      return True
  return not starts[:-1] and "stablehlo.while" in text


# Small mode on a CPU: XLA options that cut compile time several-fold (the small mode is
# a smoke test; its timings mean little anyway). An option this XLA does not know is dropped
# and the others kept (JAX 0.12's XLA has no xla_cpu_use_fusion_emitters).
FAST_CPU_COMPILE = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
  "xla_cpu_use_fusion_emitters": False,
}
_UNKNOWN_OPTION = re.compile(r"No such compile option: '([\w.]+)'")
_DROPPED_OPTIONS: set[str] = set()  # warned about once per process


def compile_program(lowered, options: dict | None = None):
  options = {k: v for k, v in (options or {}).items() if k not in _DROPPED_OPTIONS}
  while options:
    try:
      return lowered.compile(compiler_options=options)
    except Exception as e:  # noqa: BLE001
      m = _UNKNOWN_OPTION.search(str(e))
      if m is None or m.group(1) not in options:
        if "compile option" not in str(e):
          raise
        log.warning("XLA does not take %s (%s); compiling with its defaults", options, e)
        break
      if m.group(1) not in _DROPPED_OPTIONS:
        _DROPPED_OPTIONS.add(m.group(1))
        log.warning("XLA does not take the compile option %s; compiling without it", m.group(1))
      del options[m.group(1)]
  return lowered.compile()


def _xla_flops(obj) -> float | None:
  try:
    cost = obj.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops is not None and math.isfinite(flops) and flops > 0 else None


def model_flops(flop_lowered, compiled, analytic: float) -> tuple[float, str]:
  """(FLOPs per step, source). `flop_lowered`: the loop-free variant of the step;
  `compiled`: that program compiled, or None if only another variant was compiled."""
  if not _has_loop(flop_lowered):
    f = _xla_flops(flop_lowered)
    if f is not None:
      return f, "XLA lowered"
    f = None if compiled is None else _xla_flops(compiled)
    if f is not None:
      return f, "XLA compiled"
  return analytic, "analytic"


def _memory(compiled) -> float | None:
  """XLA's bytes for one program: temporaries + arguments + outputs - donated aliases."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001
    return None
  if m is None:
    return None
  total = (
    m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
  )
  return float(max(total, getattr(m, "peak_memory_in_bytes", 0) or 0))


def peak_device_bytes() -> float | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return float(stats["peak_bytes_in_use"])


def _is_oom(e: BaseException) -> bool:
  s = str(e)
  return "RESOURCE_EXHAUSTED" in s or "out of memory" in s.lower()


@dataclasses.dataclass
class StepProgram:
  """A train step at one batch size: lowered for timing and for counting FLOPs."""

  name: str
  batch: int
  lower: Callable  # batch -> (lowered step, lowered loop-free variant, analytic)
  init_state: Any  # future of the compiled params -> TrainState program
  lowered: Any = None
  flop_lowered: Any = None
  analytic: float = 0.0
  future: Any = None


class WorkloadBench:
  """One workload's programs, all lowered and handed to `pool` to compile at creation;
  `measure` then runs them."""

  def __init__(self, s: Setup, mesh, pool, options: dict | None):
    self.s, self.mesh, self.pool, self.options = s, mesh, pool, options
    self.futures = []
    self.steps = {"teacher": self._teacher_step(), "distill": self._distill_step()}
    self.samplers = {}
    n_abs = jax.ShapeDtypeStruct((), jnp.int32)
    for name, den in (
      ("teacher", denoisers.from_network(s.teacher_model)),
      ("student", denoisers.mixture(denoisers.from_network(s.student_model))),
    ):
      # N-step sampling, N traced.
      def fn(key, params, num_steps, den=den):
        return samplers.sample(
          key, s.process, den, params, s.sample_batch, s.spec.length, num_steps
        )

      self.samplers[name] = self._compile(jax.jit(fn).lower(_key_abs(), s.abstract[name], n_abs))

  def _compile(self, lowered):
    f = self.pool.submit(compile_program, lowered, self.options)
    self.futures.append(f)
    return f

  def _state_init(self, params_abs, opt):
    return self._compile(jax.jit(lambda p: train_step.init_state(p, opt)).lower(params_abs))

  def _prepare(self, p: StepProgram) -> StepProgram:
    p.lowered, p.flop_lowered, p.analytic = p.lower(p.batch)
    p.future = self._compile(p.lowered)
    return p

  def _teacher_step(self) -> StepProgram:
    s, c, model = self.s, self.s.teacher_config, self.s.teacher_model
    opt = train_step.make_optimizer(c.optim, c.train.num_steps)
    step = train_step.make_step(
      teacher_training.teacher_loss_fn(c, model, s.process),
      opt,
      c.optim.ema_decay,
      c.optim.get("ema_warmup", True),
    )
    state_abs = jax.eval_shape(lambda p: train_step.init_state(p, opt), s.abstract["teacher"])
    flops_ex = networks.flops_per_example(model)

    def lower(batch):
      lowered = sharding.shard_step(step, self.mesh).lower(
        state_abs, _abstract_batch(s.spec, batch), _key_abs(), None
      )
      return lowered, lowered, 3.0 * flops_ex * batch

    return self._prepare(
      StepProgram("teacher", s.teacher_batch, lower, self._state_init(s.abstract["teacher"], opt))
    )

  def _distill_step(self) -> StepProgram:
    s, c = self.s, self.s.student_config
    d = c.distill
    opt = train_step.make_optimizer(c.optim, c.train.num_steps)

    # The teacher's parameters reach the loss as the step's `frozen` argument, never as
    # constants (as `distill.setup_student` builds it).
    teacher = di4c.network_teacher(s.teacher_model, None)

    def step_of(config):
      loss = di4c.student_loss(
        s.student_model, teacher, s.process, config.distill, config.model.label_dropout
      )
      return train_step.make_step(
        loss, opt, config.optim.ema_decay, config.optim.get("ema_warmup", True)
      )

    step = step_of(c)
    if d.latent_chunks > 1:  # the same arithmetic without lax.map, for counting FLOPs
      c1 = ml_collections.ConfigDict(c.to_dict())
      c1.distill.latent_chunks = 1
      step1 = step_of(c1)
    else:
      step1 = None
    state_abs = jax.eval_shape(lambda p: train_step.init_state(p, opt), s.abstract["student"])
    f_s = networks.flops_per_example(s.student_model)
    f_t = networks.flops_per_example(s.teacher_model)
    separate = d.distill_mode == "separate"

    def lower(batch):
      args = (state_abs, _abstract_batch(s.spec, batch), _key_abs(), s.abstract["teacher"])
      lowered = sharding.shard_step(step, self.mesh).lower(*args)
      flop_lowered = jax.jit(step1).lower(*args) if step1 is not None else lowered
      passes = batch * d.num_latents
      trained = passes * (2 if separate else 1)  # student at t (and at distill_t)
      analytic = (
        f_s * (3.0 * trained + passes)  # + student at u, no gradient
        + f_t * (batch + (passes if separate else 0))
      )  # teacher at t (and distill_t)
      return lowered, flop_lowered, analytic

    return self._prepare(
      StepProgram("distill", s.distill_batch, lower, self._state_init(s.abstract["student"], opt))
    )

  def _run_step(self, p: StepProgram, frozen, reps: int) -> dict:
    """Times a compiled train step; on running out of memory, retries at half the batch."""
    params = random_params(self.s.abstract["teacher" if p.name == "teacher" else "student"])
    while True:
      try:
        compiled = p.future.result()
        step_s, loss = self._time_step(compiled, p, params, frozen, reps)
        break
      except Exception as e:  # noqa: BLE001
        if not _is_oom(e) or p.batch <= 1:
          raise
        log.warning(
          "%s step out of memory at batch %d; retrying at %d", p.name, p.batch, p.batch // 2
        )
        compiled = None
        p.batch //= 2
        self._prepare(p)
    flops, source = model_flops(
      p.flop_lowered, compiled if p.flop_lowered is p.lowered else None, p.analytic
    )
    return dict(
      batch=p.batch,
      step_s=step_s,
      flops=flops,
      flops_source=source,
      flops_analytic=p.analytic,
      flops_compiled=_xla_flops(compiled),
      xla_bytes=_memory(compiled),
      loss=loss,
    )

  def _time_step(self, compiled, p: StepProgram, params, frozen, reps: int):
    """(median seconds per step, loss) from a fresh state; the step donates it."""
    holder = [sharding.replicate(p.init_state.result()(params), self.mesh)]
    batch = sharding.global_batch(self.mesh, _batch(self.s.spec, p.batch, 0))
    key = sharding.replicate(jax.random.key(0), self.mesh)

    def call():
      holder[0], metrics = compiled(holder[0], batch, key, frozen)
      return metrics

    step_s = median_time(call, reps)
    return step_s, float(np.asarray(call()["loss"]))

  def _run_sampler(self, name: str, params, reps: int) -> dict:
    """Seconds per network call of N-step sampling, N in SAMPLE_STEPS."""
    compiled = self.samplers[name].result()
    return {n: self._time_sampler(compiled, params, n, reps) / n for n in SAMPLE_STEPS}

  @staticmethod
  def _time_sampler(compiled, params, n: int, reps: int) -> float:
    keys = iter(jax.random.split(jax.random.key(n), reps + 1))
    n_arr = jnp.asarray(n, jnp.int32)
    return median_time(lambda: compiled(next(keys), params, n_arr), reps)

  def measure(self, reps: int, rates: dict) -> dict:
    s = self.s
    w, d = s.workload, s.student_config.distill
    r: dict[str, Any] = dict(
      workload=w.key,
      title=w.title,
      length=s.spec.length,
      vocab=s.spec.vocab_size,
      classes=s.spec.num_classes,
      process=s.process.name,
      width=s.teacher_model.width,
      depth=s.teacher_model.depth,
      heads=s.teacher_model.heads,
      dtype=s.teacher_config.model.dtype,
      preset=d.preset,
      num_latents=d.num_latents,
      latent_chunks=d.latent_chunks,
      distill_mode=d.distill_mode,
      teacher_params=networks.count_params(s.abstract["teacher"]),
      student_params=networks.count_params(s.abstract["student"]),
      sample_batch=s.sample_batch,
      errors=[],
    )

    def attempt(what, fn, *args):
      try:
        return fn(*args)
      except Exception as e:  # noqa: BLE001 - one failure must not lose the other rows
        log.error("%s %s failed:\n%s", w.key, what, traceback.format_exc())
        r["errors"].append(f"{what}: {type(e).__name__}: {str(e)[:300]}")
        return None

    t_params = attempt("teacher init", random_params, s.abstract["teacher"])
    frozen = None if t_params is None else sharding.replicate(t_params, self.mesh)
    for prefix in ("teacher", "distill"):
      if prefix == "distill" and frozen is None:
        continue
      m = attempt(
        f"{prefix} step",
        self._run_step,
        self.steps[prefix],
        None if prefix == "teacher" else frozen,
        reps,
      )
      if m is None:
        continue
      r.update({f"{prefix}_{k}": v for k, v in m.items()})
      rate = m["flops"] / m["step_s"]
      r[f"{prefix}_model_flop_per_s"] = rate
      r[f"{prefix}_mfu_bf16"] = rate / rates["bf16"]
      r[f"{prefix}_mfu_f32"] = rate / rates["f32"]
      if prefix == "teacher":
        r["teacher_examples_per_s"] = m["batch"] / m["step_s"]
      else:
        r["student_passes_per_s"] = m["batch"] * d.num_latents / m["step_s"]
    del frozen

    per_step = {}
    for name in ("teacher", "student"):
      params = (
        t_params
        if name == "teacher"
        else attempt("student init", random_params, s.abstract["student"])
      )
      if params is not None:
        got = attempt(f"{name} sampler", self._run_sampler, name, params, reps)
        if got is not None:
          per_step[name] = got
    for n in SAMPLE_STEPS:
      for name in per_step:
        r[f"sample_{name}_s_per_step_n{n}"] = per_step[name][n]
      if len(per_step) == 2:
        r[f"sample_ratio_n{n}"] = per_step["student"][n] / per_step["teacher"][n]
    r["peak_bytes"] = peak_device_bytes()
    return r


# ---------------------------------------------------------------------------
# The run and its table.
# ---------------------------------------------------------------------------

# (JSON key, table label). Every workload's JSON holds each key.
ROWS = (
  ("shape", "tokens x values (classes)"),
  ("model", "model: width / depth / heads, dtype"),
  ("params", "parameters: teacher / student (M)"),
  ("teacher_batch", "teacher step: batch"),
  ("teacher_step_ms", "teacher step: ms"),
  ("teacher_examples_per_s", "teacher step: examples/s"),
  ("teacher_gflop", "teacher step: model GFLOP"),
  ("teacher_mfu_bf16", "teacher step: MFU vs bf16 matmul"),
  ("teacher_mfu_f32", "teacher step: MFU vs f32 matmul"),
  ("distill_batch", "Di4C step: B x L (latent_chunks, preset)"),
  ("distill_step_ms", "Di4C step: ms"),
  ("student_passes_per_s", "Di4C step: student passes/s (B x L)"),
  ("distill_gflop", "Di4C step: model GFLOP"),
  ("distill_mfu_bf16", "Di4C step: MFU vs bf16 matmul"),
  ("distill_mfu_f32", "Di4C step: MFU vs f32 matmul"),
  ("sample_batch", "sampling: batch"),
  ("sample_teacher_ms_n4", "sampling N=4: teacher ms/step"),
  ("sample_student_ms_n4", "sampling N=4: student ms/step"),
  ("sample_ratio_n4", "sampling N=4: student / teacher"),
  ("sample_teacher_ms_n8", "sampling N=8: teacher ms/step"),
  ("sample_student_ms_n8", "sampling N=8: student ms/step"),
  ("sample_ratio_n8", "sampling N=8: student / teacher"),
  ("xla_memory_gib", "XLA memory: teacher / Di4C step (GiB)"),
  ("peak_memory_gib", "peak device memory so far (GiB)"),
)
ROW_LABELS = tuple(label for _, label in ROWS)
# Numbers a complete run has for every workload (peak memory may be None: no memory_stats).
NUMERIC_KEYS = (
  "teacher_batch",
  "teacher_step_s",
  "teacher_examples_per_s",
  "teacher_flops",
  "teacher_mfu_bf16",
  "teacher_mfu_f32",
  "distill_batch",
  "num_latents",
  "latent_chunks",
  "distill_step_s",
  "student_passes_per_s",
  "distill_flops",
  "distill_mfu_bf16",
  "distill_mfu_f32",
  "sample_batch",
  "sample_teacher_s_per_step_n4",
  "sample_student_s_per_step_n4",
  "sample_ratio_n4",
  "sample_teacher_s_per_step_n8",
  "sample_student_s_per_step_n8",
  "sample_ratio_n8",
  "teacher_params",
  "student_params",
  "teacher_xla_bytes",
  "distill_xla_bytes",
)
MFU_KEYS = ("teacher_mfu_bf16", "teacher_mfu_f32", "distill_mfu_bf16", "distill_mfu_f32")


def _fmt(v, spec: str = ".3g") -> str:
  if v is None:
    return "n/a"
  return format(v, spec)


def _cells(r: dict) -> dict:
  """The table's cells of one workload."""
  ms = lambda k: None if r.get(k) is None else 1e3 * r[k]
  gib = lambda k: None if r.get(k) is None else r[k] / GIB
  cls = f" ({r['classes']} classes)" if r["classes"] else ""
  cells = {
    "shape": f"{r['length']} x {r['vocab']}{cls}",
    "model": f"{r['width']} / {r['depth']} / {r['heads']}, {r['dtype']}",
    "params": f"{r['teacher_params'] / 1e6:.4g} / {r['student_params'] / 1e6:.4g}",
    "teacher_batch": _fmt(r.get("teacher_batch"), "d"),
    "teacher_step_ms": _fmt(ms("teacher_step_s"), ".4g"),
    "teacher_examples_per_s": _fmt(r.get("teacher_examples_per_s"), ".4g"),
    "distill_step_ms": _fmt(ms("distill_step_s"), ".4g"),
    "student_passes_per_s": _fmt(r.get("student_passes_per_s"), ".4g"),
    "sample_batch": str(r["sample_batch"]),
    "xla_memory_gib": f"{_fmt(gib('teacher_xla_bytes'))} / {_fmt(gib('distill_xla_bytes'))}",
    "peak_memory_gib": _fmt(gib("peak_bytes")),
  }
  for prefix in ("teacher", "distill"):
    f = r.get(f"{prefix}_flops")
    cells[f"{prefix}_gflop"] = (
      f"{f / 1e9:.4g} ({r[prefix + '_flops_source']})" if f is not None else "n/a"
    )
    for kind in ("bf16", "f32"):
      cells[f"{prefix}_mfu_{kind}"] = _fmt(r.get(f"{prefix}_mfu_{kind}"), ".2%")
  b = r.get("distill_batch")
  cells["distill_batch"] = (
    f"{b} x {r['num_latents']} ({r['latent_chunks']}, {r['preset']})" if b is not None else "n/a"
  )
  for n in SAMPLE_STEPS:
    cells[f"sample_teacher_ms_n{n}"] = _fmt(ms(f"sample_teacher_s_per_step_n{n}"), ".4g")
    cells[f"sample_student_ms_n{n}"] = _fmt(ms(f"sample_student_s_per_step_n{n}"), ".4g")
    ratio = r.get(f"sample_ratio_n{n}")
    cells[f"sample_ratio_n{n}"] = "n/a" if ratio is None else f"{ratio:.3f} ({ratio - 1:+.1%})"
  return cells


def device_info() -> dict:
  dev = jax.devices()[0]
  return dict(
    date=datetime.date.today().isoformat(),
    jax=jax.__version__,
    backend=jax.default_backend(),
    device_kind=dev.device_kind,
    devices_used=1,
    devices_present=jax.device_count(),
    host=platform.node(),
    processor=platform.processor() or platform.machine(),
    cpus=os.cpu_count(),
  )


def render(meta: dict, results: list[dict]) -> str:
  cells = [_cells(r) for r in results]
  head = ["metric"] + [r["title"] for r in results]
  rates = meta["matmul"]
  lines = [
    "# Accelerator benchmark: teacher and Di4C steps, sampling latency, memory",
    "",
    f"{meta['date']}, jax {meta['jax']}, backend {meta['backend']}, device "
    f"{meta['device_kind']} (one of {meta['devices_present']}), host {meta['processor']} "
    f"with {meta['cpus']} CPUs. Mode {meta['mode']}, synthetic random tokens, "
    f"median of {meta['reps']} timed calls after compilation and one warm-up call.",
    "",
    f"Matmul rates ({rates['n']}x{rates['n']}, best of {2 * meta['reps']} calls): "
    f"bf16 {rates['bf16'] / 1e12:.4g} TFLOP/s, float32 {rates['f32'] / 1e12:.4g} TFLOP/s "
    "(default precision). MFU = model FLOPs per step / step time / that rate. Model FLOPs: "
    "XLA lowered = HLO cost analysis of the lowered, loop-free step program (the Di4C "
    "step with latent_chunks=1: same arithmetic, no lax.map or rematerialisation); "
    "XLA compiled = of the compiled program; analytic = 3 x "
    "`networks.flops_per_example` per trained pass, 1x per forward pass.",
    "",
    "Sampling: `samplers.sample` (analytic steps, N network calls), time per call; "
    "student / teacher is the mixture student's latency overhead (goal <= 5 %). XLA memory "
    "= temporaries + arguments + outputs - donated buffers of the compiled step; peak "
    "device memory is `memory_stats()['peak_bytes_in_use']`, cumulative over the run "
    "(n/a where the backend has none).",
    "",
    "| " + " | ".join(head) + " |",
    "|---|" + "---:|" * len(results),
  ]
  for key, label in ROWS:
    lines.append("| " + " | ".join([label] + [c[key] for c in cells]) + " |")
  errors = [f"{r['title']}: {e}" for r in results for e in r["errors"]]
  if errors:
    lines += ["", "Failures:", ""] + [f"* {e}" for e in errors]
  if meta.get("total_s") is not None:
    opts = meta.get("compiler_options")
    lines += [
      "",
      f"Run time {meta['total_s']:.0f} s, of which lowering and compiling "
      f"{meta['compile_s']:.0f} s"
      + (f" (XLA options {opts}, for compile speed)." if opts else "."),
    ]
  return "\n".join(lines) + "\n"


def run(
  mode: str | None = None,
  out: str | None = "reports/accelerator.md",
  workloads: tuple[str, ...] | list[str] = WORKLOAD_KEYS,
  reps: int | None = None,
  matmul_n: int | None = None,
  compile_threads: int | None = None,
  fast_compile: bool | None = None,
) -> dict:
  """Runs the benchmark; writes `out` (markdown) and `out` with .json; returns the JSON.

  mode None: "small" on a CPU backend, else "full". fast_compile None: on in small
  mode on a CPU (`FAST_CPU_COMPILE`), else off.
  """
  if mode is None:
    mode = "small" if jax.default_backend() == "cpu" else "full"
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; choose one of {MODES}")
  unknown = set(workloads) - set(WORKLOAD_KEYS)
  if unknown:
    raise ValueError(f"unknown workloads {sorted(unknown)}; choose from {WORKLOAD_KEYS}")
  start = time.perf_counter()
  reps = reps or (5 if mode == "full" else 3)
  cpu = jax.default_backend() == "cpu"
  n = matmul_n or (8192 if not cpu else (1024 if mode == "small" else 2048))
  threads = compile_threads or min(8, max(2, (os.cpu_count() or 2) // 2))
  mesh = one_device_mesh()
  chosen = [w for w in WORKLOADS if w.key in workloads]
  rates = {
    "n": n,
    "bf16": matmul_rate(jnp.bfloat16, n, reps),
    "f32": matmul_rate(jnp.float32, n, reps),
  }

  if fast_compile is None:
    fast_compile = cpu and mode == "small"
  options = FAST_CPU_COMPILE if fast_compile else None

  # Lower everything and compile it all in parallel before timing anything (compiling,
  # and on a GPU autotuning, beside a timed program would disturb it).
  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
    benches = [WorkloadBench(build(w, mode), mesh, pool, options) for w in chosen]
    futures = [f for b in benches for f in b.futures]
    concurrent.futures.wait(futures)
    compile_s = time.perf_counter() - t0
    log.info("lowered and compiled %d programs in %.1f s", len(futures), compile_s)
    results = []
    for b in benches:
      t0 = time.perf_counter()
      r = b.measure(reps, rates)  # a step that runs out of memory recompiles in the pool
      r["wall_s"] = time.perf_counter() - t0
      results.append(r)
      log.info("%s measured in %.1f s", r["workload"], r["wall_s"])
    del benches
  # The ceiling is the best rate seen: a noisy first measurement must not inflate MFU.
  for kind, dtype in (("bf16", jnp.bfloat16), ("f32", jnp.float32)):
    better = max(rates[kind], matmul_rate(dtype, n, reps))
    if better > rates[kind]:
      for r in results:
        for prefix in ("teacher", "distill"):
          if r.get(f"{prefix}_model_flop_per_s") is not None:
            r[f"{prefix}_mfu_{kind}"] = r[f"{prefix}_model_flop_per_s"] / better
      rates[kind] = better
  meta = dict(
    device_info(),
    mode=mode,
    reps=reps,
    matmul=rates,
    compiler_options=options,
    total_s=time.perf_counter() - start,
    compile_s=compile_s,
  )
  text = render(meta, results)
  print(text, flush=True)
  data = {
    "meta": meta,
    "columns": [r["title"] for r in results],
    "rows": list(ROW_LABELS),
    "results": {r["workload"]: r for r in results},
  }
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    _write(out, text)
    _write(os.path.splitext(out)[0] + ".json", json.dumps(data, indent=2, default=_json_default))
  return data


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  return str(o)


def _write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def main(argv):
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.basicConfig(level=logging.INFO)
  f = _flags()
  run(
    mode=f.mode.value,
    out=f.out.value,
    workloads=f.workloads.value,
    reps=f.reps.value,
    matmul_n=f.matmul_n.value,
  )


@dataclasses.dataclass
class _Flags:
  mode: Any
  out: Any
  workloads: Any
  reps: Any
  matmul_n: Any


_FLAGS: _Flags | None = None


def _flags() -> _Flags:
  """Defined on first use, so importing this module (the tests do) defines no flags
  that could clash with another benchmark's `--out`."""
  global _FLAGS
  if _FLAGS is None:
    from absl import flags

    _FLAGS = _Flags(
      mode=flags.DEFINE_enum(
        "mode",
        None,
        MODES,
        "small: shrunk models (CPU, tests); "
        "full: the configs' sizes (an accelerator). Default: small "
        "on a CPU backend, else full.",
      ),
      out=flags.DEFINE_string(
        "out", "reports/accelerator.md", "Markdown report path; the JSON goes next to it (.json)."
      ),
      workloads=flags.DEFINE_list("workloads", list(WORKLOAD_KEYS), f"Which of {WORKLOAD_KEYS}."),
      reps=flags.DEFINE_integer(
        "reps", None, "Timed calls per measurement (default 5 full, 3 small)."
      ),
      matmul_n=flags.DEFINE_integer(
        "matmul_n",
        None,
        "Matmul size for the peak rates (default 8192 on accelerators, 1024/2048 on CPU).",
      ),
    )
  return _FLAGS


if __name__ == "__main__":
  # Let XLA's allocator take most of an accelerator's memory (its default is 75 %): the
  # full-size steps are sized for one device. Read when JAX starts its backend, later.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  from absl import app

  _flags()
  app.run(main)
