"""Two real processes against one process with as many devices.

The launchers run under jax.distributed over localhost (gloo collectives),
each process reads its own slice of every global batch and Orbax writes one
checkpoint into the shared workdir. Teacher training (2 x 1 devices, in the
preemption test) and a Di4C distillation (2 x 2 devices) must end with the
parameters of the single-process run.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from mixture_dd import checkpoints, configuration, runs, teacher_training, train_step, trainer
from mixture_dd.configs import tiny as tiny_cfg
from mixture_dd.data import pipeline
from tests.conftest import REPO, subprocess_env

DATA = ["--config.data.num_train=2000", "--config.data.num_test=200"]
MODEL = ["--config.model.width=32", "--config.model.depth=1", "--config.model.heads=2"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(module, args, workdir, devices, num_processes=1, process_id=0, port=None, stderr=None):
  cmd = [sys.executable, "-m", module, *args, f"--workdir={workdir}"]
  if num_processes > 1:
    cmd += [
      f"--num_processes={num_processes}",
      f"--process_id={process_id}",
      f"--coordinator_address=localhost:{port}",
    ]
  return subprocess.Popen(
    cmd,
    cwd=REPO,
    env=subprocess_env(devices),
    stdout=subprocess.DEVNULL,
    stderr=stderr or subprocess.PIPE,
    text=True,
  )


def _run_both(module, args, tmp_path, name):
  """2 processes x 2 devices and 1 process x 4 devices, all at once."""
  port = _free_port()
  multi, single = tmp_path / f"{name}_2proc", tmp_path / f"{name}_1proc"
  procs = [_start(module, args, multi, 2, 2, i, port) for i in range(2)]
  procs.append(_start(module, args, single, 4))
  try:
    outs = [p.communicate(timeout=400)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return str(multi), str(single), outs


def _assert_same_params(multi, single, model, sig=None, exact=False):
  abstract = jax.eval_shape(lambda: train_step.init_params(model, 0))
  for ema in (False, True):
    a, meta_a = checkpoints.load_params(multi, abstract, sig, ema=ema)
    b, meta_b = checkpoints.load_params(single, abstract, sig, ema=ema)
    assert meta_a["seed"] == meta_b["seed"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      if exact:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
      else:  # float32 all-reduce order differs between 2 x 2 and 1 x 4 devices.
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_batches_are_split_between_processes_exactly():
  tokens = np.arange(1000 * 3, dtype=np.int32).reshape(1000, 3)
  for count in (1, 2, 4):
    batchers = [
      pipeline.Batcher(tokens, None, 64, seed=3, process_index=i, process_count=count)
      for i in range(count)
    ]
    for step in (0, 1, 15, 16, 40):  # 15 steps per epoch: crosses epochs
      parts = [b.batch(step)["tokens"][:, 0] // 3 for b in batchers]
      got = np.concatenate(parts)
      np.testing.assert_array_equal(got, batchers[0].global_indices(step))
      assert len(set(got.tolist())) == 64  # nothing duplicated or dropped


def test_a_two_process_distillation_matches_one_process(tmp_path):
  """2 processes x 2 devices against 1 process x 4 devices, a Di4C student of the exact
  teacher (teacher training across processes: the preemption test below)."""
  t0 = time.time()
  data_dir = tmp_path / "tfds"
  c = tiny_cfg.get_config()
  c.data.data_dir, c.data.num_train, c.data.num_test = str(data_dir), 2000, 200
  spec, _ = pipeline.load(c.data, "train")  # built once, before the processes race for it
  student = [
    f"--config={REPO}/configs/tiny_distill.py",
    f"--config.data.data_dir={data_dir}",
    *DATA,
    *MODEL,
    "--config.train.batch_size=32",
    "--config.train.log_every=2",
    "--config.train.sample_every=0",
    "--config.distill.num_latents=4",
    "--config.train.num_steps=4",
    "--config.train.ckpt_every=2",
  ]
  multi, single, outs = _run_both("launch.distill", student, tmp_path, "student")
  assert "distill step 4/4" in outs[0]
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]
  run = runs.load_run(single)
  _assert_same_params(multi, single, run.model, configuration.model_signature(run.config, spec))
  print(f"two-process test wall time: {time.time() - t0:.1f}s")


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_resume_is_exact(tmp_path):
  """A preemption notice to ONE process of a 2-process run (as a pod slice
  gets): Orbax's reached_preemption agrees on one step, both processes save
  it and exit with the preemption status; rerunning both resumes to the same
  parameters, bit for bit, as an uninterrupted 2-process run, which in turn
  ends where one process with both devices ends."""
  data_dir = tmp_path / "tfds"
  c = tiny_cfg.get_config()
  c.data.data_dir, c.data.num_train, c.data.num_test = str(data_dir), 2000, 200
  c.model.update(width=32, depth=1, heads=2)
  spec, _ = pipeline.load(c.data, "train")
  args = [
    f"--config={REPO}/configs/tiny.py",
    f"--config.data.data_dir={data_dir}",
    *DATA,
    *MODEL,
    "--config.train.batch_size=32",
    "--config.train.log_every=1",
    "--config.train.ckpt_every=1000",
    "--config.train.sample_every=0",
  ]

  def both(workdir, num_steps, watch=None, single=None):
    """2 processes x 1 device into workdir (and 1 process x 2 devices into single)."""
    port = _free_port()
    logs = [open(tmp_path / f"{workdir.name}_{i}_{time.time()}.log", "w+") for i in range(3)]
    a = [*args, f"--config.train.num_steps={num_steps}"]
    procs = [_start("launch.train", a, workdir, 1, 2, i, port, logs[i]) for i in range(2)]
    if single:
      procs.append(_start("launch.train", a, single, 2, stderr=logs[2]))
    try:
      if watch:
        deadline = time.time() + 300
        while watch not in open(logs[0].name).read():
          assert time.time() < deadline and procs[0].poll() is None, open(logs[0].name).read()
          time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGTERM)  # only the second process is told
      rcs = [p.wait(timeout=400) for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    return rcs, [open(f.name).read() for f in logs]

  n = 200
  rcs, logs = both(tmp_path / "p", n, watch="teacher step 5/")
  assert rcs == [trainer.EXIT_PREEMPTED] * 2, [log[-2000:] for log in logs]
  saved = [int(s) for s in os.listdir(tmp_path / "p" / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and 5 <= saved[0] < n, saved
  for log in logs[:2]:
    assert f"saved step {saved[0]}" in log, log[-2000:]
  k = saved[0] + 3
  rcs, logs = both(tmp_path / "p", k)
  assert rcs == [0, 0] and f"resumed from step {saved[0]}" in logs[0], logs[0][-2000:]
  rcs, logs = both(tmp_path / "straight", k, single=tmp_path / "single")
  assert rcs == [0, 0, 0], [log[-2000:] for log in logs]
  model = teacher_training.setup_teacher(c).model
  _assert_same_params(str(tmp_path / "p"), str(tmp_path / "straight"), model, exact=True)
  sig = configuration.model_signature(c, spec)
  _assert_same_params(str(tmp_path / "straight"), str(tmp_path / "single"), model, sig)
