"""Faults a long run meets: preemption, damaged checkpoints, NaN, bad input.

Every fault must end in one of: an exact resume, or an error that names the
field / step / term at fault, raised before any XLA compilation where the
input alone shows the problem.
"""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny as tiny_cfg
from configs import tiny_distill as tiny_distill_cfg
from mixture_dd import distill, train
from mixture_dd.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(data_dir, **train_overrides):
  c = tiny_cfg.get_config()
  c.data.data_dir = str(data_dir)
  c.data.num_train, c.data.num_test = 2000, 200
  c.model.update(width=32, depth=1, heads=2)
  c.train.update(batch_size=64, num_steps=4, log_every=2, ckpt_every=2, keep=5, sample_every=0)
  c.train.update(train_overrides)
  return c


def small_distill_config(data_dir, **train_overrides):
  c = tiny_distill_cfg.get_config()
  c.data.data_dir = str(data_dir)
  c.data.num_train, c.data.num_test = 2000, 200
  c.model.update(width=32, depth=1, heads=2)
  c.distill.num_latents = 4
  c.train.update(batch_size=16, num_steps=4, log_every=2, ckpt_every=2, sample_every=0)
  c.train.update(train_overrides)
  return c


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  pipeline.load(small_config(d).data, "train")
  return d


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A 4-step teacher run with checkpoints at steps 1..4: (workdir, final state)."""
  w = str(tmp_path_factory.mktemp("trained") / "w")
  state = train.train_and_evaluate(small_config(data_dir, ckpt_every=1), w)
  return w, jax.device_get(state)


# ---------------------------------------------------------------------------
# Damaged, partial and incompatible checkpoints.
# ---------------------------------------------------------------------------


def _state_files(step_dir):
  out = []
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    out += [os.path.join(root, f) for f in files]
  return out


def _truncate(step_dir):
  for f in _state_files(step_dir):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 3)


def _flip_bytes(step_dir):
  """Same sizes, a few bytes changed in every data file: only a checksum sees it."""
  for f in _state_files(step_dir):
    size = os.path.getsize(f)
    if size < 64 or f.endswith(("_METADATA", ".json", "manifest.ocdbt")):
      continue
    with open(f, "r+b") as fh:
      fh.seek(size // 2)
      b = fh.read(4)
      fh.seek(size // 2)
      fh.write(bytes(x ^ 0x5A for x in b))


def test_damaged_latest_checkpoints_resume_from_the_last_good_one(trained, data_dir, tmp_path,
                                                                  caplog):
  src, final = trained
  w = str(tmp_path / "w")
  shutil.copytree(src, w)
  ck = os.path.join(w, "checkpoints")
  _flip_bytes(os.path.join(ck, "4"))
  _truncate(os.path.join(ck, "3"))
  # Leftovers of interrupted saves: an Orbax temporary directory and a step
  # directory with no metadata (nothing committed).
  os.makedirs(os.path.join(ck, "6.orbax-checkpoint-tmp-1234", "state"))
  os.makedirs(os.path.join(ck, "8", "state"))
  with open(os.path.join(ck, "8", "state", "junk"), "wb") as f:
    f.write(b"\0" * 10)
  with caplog.at_level(logging.WARNING, logger="mixture_dd"):
    resumed = train.train_and_evaluate(small_config(data_dir), w)
  text = caplog.text
  for bad in (8, 4, 3):
    assert f"checkpoint step {bad} " in text, text
  assert "resuming" in text and "from step 2" in text, text
  _leaves_equal(final.params, resumed.params)
  _leaves_equal(final.opt_state, resumed.opt_state)
  names = os.listdir(ck)
  assert {"3.corrupt", "4.corrupt", "8.corrupt", "4"} <= set(names), names  # 3: ckpt_every=2
  assert not any("orbax-checkpoint-tmp" in n for n in names), names


def test_all_checkpoints_unreadable_is_an_error_not_a_fresh_start(trained, data_dir, tmp_path):
  src, _ = trained
  w = str(tmp_path / "w")
  shutil.copytree(src, w)
  for s in ("1", "2", "3", "4"):
    _truncate(os.path.join(w, "checkpoints", s))
  with pytest.raises(RuntimeError, match=r"none of the checkpoints.*steps \[4, 3, 2, 1\]"):
    train.train_and_evaluate(small_config(data_dir), w)


@pytest.mark.parametrize("field,value,names", [
    ("model.width", 64, "model.width: checkpoint has 32, config has 64"),
    ("data.vocab_size", 4, "process.vocab_size: checkpoint has 3, config has 4"),
])
def test_incompatible_checkpoint_names_the_fields(trained, data_dir, tmp_path, field, value,
                                                  names):
  src, _ = trained
  w = str(tmp_path / "w")
  shutil.copytree(src, w)
  c = small_config(data_dir, num_steps=6)
  sec, name = field.split(".")
  c[sec][name] = value
  with pytest.raises(train.IncompatibleCheckpoint, match=names):
    train.train_and_evaluate(c, w)
  assert _steps(w) == ["1", "2", "3", "4"]  # nothing overwritten


# ---------------------------------------------------------------------------
# Non-finite values, with the real Di4C loss.
# ---------------------------------------------------------------------------


def test_poisoned_teacher_stops_naming_the_di4c_term(trained, data_dir, tmp_path, monkeypatch):
  """A trained network teacher whose frozen parameters went NaN: the loss
  is finite, the gradient NaN (the finite-loss / NaN-gradient case)."""
  real = distill.network_teacher

  def poisoned(model, params, num_latents=16):
    t = real(model, params, num_latents)
    return distill.Teacher(t.fn, jax.tree.map(lambda a: a * np.nan, t.frozen), t.description)
  monkeypatch.setattr(distill, "network_teacher", poisoned)
  c = small_distill_config(data_dir)
  c.teacher.kind, c.teacher.workdir = "network", trained[0]
  # The Di4C loss value stays finite (its KL terms mask NaN teacher
  # probabilities), but the gradient does not: grad_norm catches it at step 1.
  with pytest.raises(train.NonFiniteError, match=r"step 1 in \[.*'grad_norm', 'parameters'\]"):
    distill.distill_and_evaluate(c, str(tmp_path / "s"))
  assert not [s for s in _steps(str(tmp_path / "s")) if s.isdigit()]


def test_exploding_learning_rate_stops_before_saving(data_dir, tmp_path):
  c = small_config(data_dir, num_steps=6, ckpt_every=1, log_every=6)
  c.optim.update(lr=1e38, warmup_steps=0, clip=1e38)
  with pytest.raises(train.NonFiniteError, match=r"step \d+ in \[.*parameters"):
    train.train_and_evaluate(c, str(tmp_path / "lr"))
  # Whatever was saved before the blow-up is finite, and nothing after it.
  for s in _steps(str(tmp_path / "lr")):
    assert s.isdigit()


# ---------------------------------------------------------------------------
# Bad input: clear errors, before any compilation.
# ---------------------------------------------------------------------------


def _fake_load(tokens, labels=None):
  real = pipeline.load

  def load(data_config, split):
    spec, _ = real(data_config, split)
    toks = np.asarray(tokens)
    return spec, pipeline.ArraySource(
        toks, np.zeros(len(toks), np.int32) if labels is None else labels)
  return load


BAD_DATA = [
    ("float tokens", lambda: np.full((500, 3), 0.5, np.float32), "must be integers"),
    ("out of range", lambda: np.full((500, 3), 7, np.int32), r"out of range|outside the vocab"),
    ("negative", lambda: np.full((500, 3), -1, np.int32), r"out of range|outside the vocab"),
    ("empty", lambda: np.zeros((0, 3), np.int32), "empty"),
    ("wrong rank", lambda: np.zeros((500,), np.int32), r"tokens|length|shape"),
    ("too few for a batch", lambda: np.zeros((10, 3), np.int32), "batch"),
]


@pytest.mark.parametrize("entry", ["teacher", "student"])
@pytest.mark.parametrize("what,tokens,match", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_is_a_clear_error(data_dir, tmp_path, monkeypatch, entry, what, tokens, match):
  monkeypatch.setattr(pipeline, "load", _fake_load(tokens()))
  if entry == "teacher":
    run = lambda: train.train_and_evaluate(small_config(data_dir, batch_size=16), str(tmp_path / "w"))
  else:
    run = lambda: distill.distill_and_evaluate(small_distill_config(data_dir), str(tmp_path / "w"))
  with pytest.raises(ValueError, match=match):
    run()
  assert not os.path.isdir(tmp_path / "w" / "checkpoints")


def _teacher_cfg(data_dir, path, value):
  c = small_config(data_dir)
  sec, name = path.split(".")
  c[sec][name] = value
  return c


BAD_TEACHER = [
    ("train.num_steps", 0, "config.train.num_steps: must be > 0"),
    ("train.batch_size", 12, r"batch_size=12 must be divisible by the number of devices \(8\)"),
    ("train.batch_size", -8, "config.train.batch_size: must be > 0"),
    ("optim.lr", -1e-3, "config.optim.lr: must be a positive number"),
    ("optim.lr", float("nan"), "config.optim.lr"),
    ("train.ckpt_every", 0, "config.train.ckpt_every"),
    ("data.name", "imagenet9", r"data.name='imagenet9' is not a known data set; choose one of"),
    ("process.name", "gaussain", r"config.process.name: 'gaussain' is unknown; choose one of"),
]


@pytest.mark.parametrize("path,value,match", BAD_TEACHER, ids=[f"{p}={v}" for p, v, _ in BAD_TEACHER])
def test_bad_teacher_config_names_the_field(data_dir, tmp_path, path, value, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(_teacher_cfg(data_dir, path, value), str(tmp_path / "w"))
  assert not os.path.isdir(tmp_path / "w" / "checkpoints")


def test_bad_student_configs_name_the_field(data_dir, tmp_path):
  w = str(tmp_path / "w")
  with pytest.raises(ValueError, match=r"config.distill.preset='nope' is unknown; choose one of"):
    distill.preset("nope")
  c = small_distill_config(data_dir)
  c.distill.latent_chunks = 3
  with pytest.raises(ValueError, match="config.distill.latent_chunks: must divide num_latents=4"):
    distill.distill_and_evaluate(c, w)
  c = small_distill_config(data_dir, num_steps=0)
  with pytest.raises(ValueError, match="config.train.num_steps"):
    distill.distill_and_evaluate(c, w)
  c = small_distill_config(data_dir)
  c.optim.lr = -1.0
  with pytest.raises(ValueError, match="config.optim.lr"):
    distill.distill_and_evaluate(c, w)
  c = small_distill_config(data_dir, batch_size=6)
  with pytest.raises(ValueError, match="batch_size=6 must be divisible"):
    distill.distill_and_evaluate(c, w)
  c = small_distill_config(data_dir)
  c.teacher.kind = "network"
  c.teacher.workdir = str(tmp_path / "no_such_teacher")
  with pytest.raises(FileNotFoundError, match="config.teacher.workdir must be the --workdir"):
    distill.distill_and_evaluate(c, w)
  c.teacher.kind = "oracle"
  with pytest.raises(ValueError, match="config.teacher.kind='oracle'; choose"):
    distill.distill_and_evaluate(c, w)
  assert not os.path.isdir(os.path.join(w, "checkpoints"))


def test_loop_config_is_validated(tmp_path):
  for field, value in [("num_steps", 0), ("log_every", -1), ("keep", 0), ("ckpt_every", 1.5)]:
    loop = train.LoopConfig(workdir=str(tmp_path), num_steps=4, seed=0)
    setattr(loop, field, value)
    with pytest.raises(ValueError, match=f"LoopConfig.{field}"):
      loop.validate()


# ---------------------------------------------------------------------------
# Launcher flags.
# ---------------------------------------------------------------------------


def _launch(module, *args, env=None, timeout=120):
  e = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=e,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,match", [
    (["--num_processes=0"], "--num_processes=0: must be >= 1"),
    (["--num_processes=2", "--process_id=2"], r"--process_id=2: must be in \[0, 2\)"),
    (["--num_processes=2"], "needs --coordinator_address=host:port"),
    (["--num_processes=2", "--coordinator_address=nohostport"], "expected host:port"),
    (["stray_arg"], "unexpected arguments"),
])
def test_launcher_flags_are_validated(args, match):
  from launch import common
  from absl import flags
  flag_vals = {"--num_processes": 1, "--process_id": 0, "--coordinator_address": None}
  argv = ["prog"]
  for a in args:
    if a.startswith("--"):
      k, v = a.split("=", 1)
      flag_vals[k] = int(v) if k != "--coordinator_address" else v
    else:
      argv.append(a)
  with pytest.raises(ValueError, match=match):
    if len(argv) > 1:
      common.setup(argv)
    common.distributed_setup(flag_vals["--num_processes"], flag_vals["--process_id"],
                             flag_vals["--coordinator_address"])


def test_launcher_workdir_is_validated(tmp_path):
  from launch import common
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match="exists and is not a directory"):
    common.check_workdir(str(f))
  with pytest.raises(ValueError, match="--workdir is empty"):
    common.check_workdir("  ")


# ---------------------------------------------------------------------------
# Preemption: a real SIGTERM to a real launcher process.
# ---------------------------------------------------------------------------


def test_sigterm_saves_and_resume_is_exact(data_dir, tmp_path):
  n = 40
  flags_ = [f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
            f"--config.data.data_dir={data_dir}", "--config.data.num_train=2000",
            "--config.data.num_test=200", "--config.model.width=32", "--config.model.depth=1",
            "--config.model.heads=2", "--config.train.batch_size=64",
            f"--config.train.num_steps={n}", "--config.train.log_every=1",
            "--config.train.ckpt_every=1000", "--config.train.sample_every=0"]
  # One compilation cache for the three runs: they compile the same program.
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
  # Uninterrupted.
  r = _launch("launch.train", *flags_, f"--workdir={tmp_path / 'straight'}", env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  # Interrupted by a real SIGTERM once training runs, then resumed.
  proc = subprocess.Popen([sys.executable, "-m", "launch.train", *flags_,
                           f"--workdir={tmp_path / 'p'}"], cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  lines = []
  try:
    deadline = time.time() + 240
    for line in proc.stderr:
      lines.append(line)
      if "teacher step 3/" in line:
        os.kill(proc.pid, signal.SIGTERM)
        break
      assert time.time() < deadline, "".join(lines[-20:])
    rest = proc.stderr.read()
    rc = proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  log_text = "".join(lines) + rest
  assert rc == 0, log_text[-3000:]
  saved = [int(s) for s in _steps(str(tmp_path / "p")) if s.isdigit()]
  assert len(saved) == 1 and 3 <= saved[0] < n, (saved, log_text[-2000:])
  assert f"saved step {saved[0]} and stopping" in log_text
  r = _launch("launch.train", *flags_, f"--workdir={tmp_path / 'p'}", env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resumed from step {saved[0]}" in r.stderr
  c = small_config(data_dir)
  spec, _, process, model, _ = train.setup_teacher(c)
  abstract = jax.eval_shape(lambda: train.init_params(model, 0))
  for ema in (False, True):
    want, meta_a = train.load_params(str(tmp_path / "straight"), abstract, ema=ema)
    got, meta_b = train.load_params(str(tmp_path / "p"), abstract, ema=ema)
    _leaves_equal(want, got)
    assert meta_a["fingerprint"] == meta_b["fingerprint"]  # the whole state, optimizer too
