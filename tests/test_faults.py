"""Faults a long run meets: preemption, damaged checkpoints, NaN, bad input.

Every fault must end in one of: an exact resume, or an error that names the
field / step / term at fault, raised before any XLA compilation where the
input alone shows the problem.
"""

import dataclasses
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from mixture_dd import checkpoints, configuration, di4c, distill, teacher_training, trainer
from mixture_dd.configs import tiny as tiny_cfg
from mixture_dd.configs import tiny_distill as tiny_distill_cfg
from mixture_dd.data import pipeline


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
  state = teacher_training.train_teacher(small_config(data_dir, ckpt_every=1), w)
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


def test_damaged_latest_checkpoints_resume_from_the_last_good_one(
  trained, data_dir, tmp_path, caplog
):
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
    resumed = teacher_training.train_teacher(small_config(data_dir), w)
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
  with pytest.raises(
    checkpoints.UnreadableCheckpoints, match=r"none of the checkpoints.*steps \[4, 3, 2, 1\]"
  ):
    teacher_training.train_teacher(small_config(data_dir), w)


@pytest.mark.parametrize(
  "field,value,names",
  [
    ("model.width", 64, "model.width: checkpoint has 32, config has 64"),
    ("data.vocab_size", 4, "process.vocab_size: checkpoint has 3, config has 4"),
  ],
)
def test_incompatible_checkpoint_names_the_fields(trained, data_dir, tmp_path, field, value, names):
  src, _ = trained
  w = str(tmp_path / "w")
  shutil.copytree(src, w)
  c = small_config(data_dir, num_steps=6)
  sec, name = field.split(".")
  c[sec][name] = value
  with pytest.raises(checkpoints.IncompatibleCheckpoint, match=names):
    teacher_training.train_teacher(c, w)
  assert _steps(w) == ["1", "2", "3", "4"]  # nothing overwritten


# ---------------------------------------------------------------------------
# Non-finite values, with the real Di4C loss.
# ---------------------------------------------------------------------------


def test_poisoned_teacher_stops_naming_the_di4c_term(trained, data_dir, tmp_path, monkeypatch):
  """A trained network teacher whose frozen parameters went NaN: the loss
  is finite, the gradient NaN (the finite-loss / NaN-gradient case)."""
  real = di4c.network_teacher

  def poisoned(model, params, latent_nodes=16, provenance=None):
    t = real(model, params, latent_nodes, provenance)
    return dataclasses.replace(t, frozen=jax.tree.map(lambda a: a * np.nan, t.frozen))

  monkeypatch.setattr(di4c, "network_teacher", poisoned)
  c = small_distill_config(data_dir)
  c.teacher.kind, c.teacher.workdir = "network", trained[0]
  # The Di4C loss value stays finite (its KL terms mask NaN teacher
  # probabilities), but the gradient does not: grad_norm catches it at step 1.
  with pytest.raises(trainer.NonFiniteError, match=r"step 1 in \[.*'grad_norm', 'parameters'\]"):
    distill.distill_student(c, str(tmp_path / "s"))
  assert not [s for s in _steps(str(tmp_path / "s")) if s.isdigit()]


def test_exploding_learning_rate_stops_before_saving(data_dir, tmp_path):
  c = small_config(data_dir, num_steps=6, ckpt_every=1, log_every=6)
  c.optim.update(lr=1e38, warmup_steps=0, clip=1e38)
  with pytest.raises(trainer.NonFiniteError, match=r"step \d+ in \[.*parameters"):
    teacher_training.train_teacher(c, str(tmp_path / "lr"))
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
      toks, np.zeros(len(toks), np.int32) if labels is None else labels
    )

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
    run = lambda: teacher_training.train_teacher(
      small_config(data_dir, batch_size=16), str(tmp_path / "w")
    )
  else:
    run = lambda: distill.distill_student(small_distill_config(data_dir), str(tmp_path / "w"))
  with pytest.raises(ValueError, match=match):
    run()
  assert not os.path.isdir(tmp_path / "w" / "checkpoints")


def _teacher_cfg(data_dir, path, value):
  c = small_config(data_dir)
  sec, name = path.split(".")
  c[sec][name] = value
  return c


BAD_TEACHER = [
  ("train.num_steps", 0, "config.train.num_steps: must be a positive integer"),
  ("train.batch_size", 12, r"batch_size=12 must be divisible by the number of devices \(8\)"),
  ("train.batch_size", -8, "config.train.batch_size: must be a positive integer"),
  ("optim.lr", -1e-3, "config.optim.lr: must be a positive number"),
  ("optim.lr", float("nan"), "config.optim.lr"),
  ("train.ckpt_every", 0, "config.train.ckpt_every"),
  ("data.name", "imagenet9", r"data.name='imagenet9' is not a known data set; choose one of"),
  ("process.name", "gaussain", r"config.process.name: 'gaussain' is unknown; choose one of"),
]


@pytest.mark.parametrize(
  "path,value,match", BAD_TEACHER, ids=[f"{p}={v}" for p, v, _ in BAD_TEACHER]
)
def test_bad_teacher_config_names_the_field(data_dir, tmp_path, path, value, match):
  with pytest.raises(ValueError, match=match):
    teacher_training.train_teacher(_teacher_cfg(data_dir, path, value), str(tmp_path / "w"))
  assert not os.path.isdir(tmp_path / "w" / "checkpoints")


def test_bad_student_configs_name_the_field(data_dir, tmp_path):
  w = str(tmp_path / "w")
  with pytest.raises(ValueError, match=r"config.distill.preset='nope' is unknown; choose one of"):
    configuration.distill_preset("nope")
  c = small_distill_config(data_dir)
  c.distill.latent_chunks = 3
  with pytest.raises(ValueError, match="config.distill.latent_chunks: must divide num_latents=4"):
    distill.distill_student(c, w)
  c = small_distill_config(data_dir, num_steps=0)
  with pytest.raises(ValueError, match="config.train.num_steps"):
    distill.distill_student(c, w)
  c = small_distill_config(data_dir)
  c.optim.lr = -1.0
  with pytest.raises(ValueError, match="config.optim.lr"):
    distill.distill_student(c, w)
  c = small_distill_config(data_dir, batch_size=6)
  with pytest.raises(ValueError, match="batch_size=6 must be divisible"):
    distill.distill_student(c, w)
  c = small_distill_config(data_dir)
  c.teacher.kind = "network"
  c.teacher.workdir = str(tmp_path / "no_such_teacher")
  with pytest.raises(FileNotFoundError, match="config.teacher.workdir must be the --workdir"):
    distill.distill_student(c, w)
  c.teacher.kind = "oracle"
  with pytest.raises(ValueError, match="config.teacher.kind='oracle'; choose"):
    distill.distill_student(c, w)
  assert not os.path.isdir(os.path.join(w, "checkpoints"))


def test_loop_fields_are_validated_once_at_the_config(data_dir):
  for field, value in [
    ("num_steps", 0),
    ("log_every", -1),
    ("keep", 0),
    ("ckpt_every", 1.5),
    ("batch_size", True),
    ("sample_every", -1),
  ]:
    c = small_config(data_dir).to_dict()
    c["train"][field] = value  # a plain dict: ConfigDict would refuse a float for an int
    c = ml_collections.ConfigDict(c)
    with pytest.raises(ValueError, match=rf"config\.train\.{field}: must be"):
      configuration.validate(c, pipeline.data_spec(c.data))


# ---------------------------------------------------------------------------
# Launcher flags.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "args,match",
  [
    (["--num_processes=0"], "--num_processes=0: must be >= 1"),
    (["--num_processes=2", "--process_id=2"], r"--process_id=2: must be in \[0, 2\)"),
    (["--num_processes=2"], "needs --coordinator_address=host:port"),
    (["--num_processes=2", "--coordinator_address=nohostport"], "expected host:port"),
    (["stray_arg"], "unexpected arguments"),
  ],
)
def test_launcher_flags_are_validated(args, match):
  from launch import common

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
    common.distributed_setup(
      flag_vals["--num_processes"], flag_vals["--process_id"], flag_vals["--coordinator_address"]
    )


def test_launcher_workdir_is_validated(tmp_path):
  from launch import common

  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match="exists and is not a directory"):
    common.check_workdir(str(f))
  with pytest.raises(ValueError, match="--workdir is empty"):
    common.check_workdir("  ")


# A real SIGTERM to real launcher processes: tests/test_demo.py (the demo's
# teacher stage) and tests/test_multiprocess.py (one of two processes); a
# real Ctrl-C, and every bad input of the launchers: tests/test_first_hour.py.


# ---------------------------------------------------------------------------
# Provenance: a student's checkpoints name their teacher.
# ---------------------------------------------------------------------------


def test_student_resumed_against_a_changed_teacher_is_refused(trained, data_dir, tmp_path):
  teacher_dir = str(tmp_path / "teacher")
  shutil.copytree(trained[0], teacher_dir)
  c = small_distill_config(data_dir, num_steps=2, ckpt_every=2)
  c.teacher.kind, c.teacher.workdir = "network", teacher_dir
  student_dir = str(tmp_path / "student")
  distill.distill_student(c, student_dir)
  meta = checkpoints.load_params(student_dir, distill.setup_student(c).params)[1]
  assert meta["provenance"]["workdir"] == os.path.abspath(teacher_dir)
  assert meta["provenance"]["step"] == 4
  # Finished against the same teacher: recognised as finished, nothing retrained.
  distill.distill_student(c, student_dir)
  assert _steps(student_dir) == ["2"]
  # The teacher trains on (steps 5, 6): another step, other weights.
  teacher_training.train_teacher(small_config(data_dir, num_steps=6, ckpt_every=1), teacher_dir)
  c.train.num_steps = 4
  with pytest.raises(checkpoints.ProvenanceChanged) as err:
    distill.distill_student(c, student_dir)
  assert "step=4" in str(err.value) and "step=6" in str(err.value)
  assert "restart_if_changed" in str(err.value)
  assert _steps(student_dir) == ["2"]  # the old checkpoints are untouched
  # With the flag: the old checkpoints are set aside and the student starts afresh.
  c.teacher.restart_if_changed = True
  state = distill.distill_student(c, student_dir)
  assert int(state.step) == 4
  assert os.path.isdir(os.path.join(student_dir, "checkpoints.stale"))
  meta = checkpoints.load_params(student_dir, distill.setup_student(c).params)[1]
  assert meta["provenance"]["step"] == 6


def test_a_failed_report_write_leaves_no_partial_file(tmp_path, monkeypatch):
  """The report is written to a temporary file and renamed: a crash (or a
  SIGTERM) mid-write leaves the previous file or none, never half of one."""
  path = tmp_path / "results.md"
  checkpoints.write_atomic(str(path), "old complete report\n")

  def crash(*args):
    raise KeyboardInterrupt("killed mid-write")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    checkpoints.write_atomic(str(path), "new report " * 10000)
  assert path.read_text() == "old complete report\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]  # no temp file left
