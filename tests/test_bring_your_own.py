"""A teacher of one's own and a token array through the production path
(colabs/bring_your_own.ipynb, part (a)): `distill.distill_student(config,
workdir, teacher=..., tokens=...)` checkpoints, resumes exactly after a stop,
records the teacher's provenance and refuses another one, and leaves a run
that `runs.load_run` samples without the teacher or the tokens.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_dd import (
  checkpoints,
  configuration,
  denoisers,
  di4c,
  distill,
  exact,
  processes,
  runs,
  trainer,
)
from mixture_dd.data import pipeline

S, D = 3, 4
STATES = jnp.asarray(exact.enumerate_states(S, D), jnp.int32)  # [S^D, D]


def _tokens(n=512, seed=0):
  """The notebook's law: (a, a + 1, a + 2, a + 2b) mod 3, each token resampled w.p. 0.1."""
  rng = np.random.default_rng(seed)
  a, b = rng.integers(0, S, (2, n))
  x = np.stack([a, (a + 1) % S, (a + 2) % S, (a + 2 * b) % S], axis=1)
  return np.where(rng.random(x.shape) < 0.1, rng.integers(0, S, x.shape), x).astype(np.int32)


def _posterior(p, x_t, t):
  """Exact per-token posteriors of the law p `[S^D]` given x_t `[B, D]` (mask id S)."""
  ok = jnp.all((x_t[:, None, :] == S) | (x_t[:, None, :] == STATES[None]), axis=-1)
  w = ok * (p[None] + 1e-12)
  w = w / w.sum(-1, keepdims=True)
  return jnp.log(jnp.einsum("bm,mda->bda", w, jax.nn.one_hot(STATES, S)) + 1e-30)


def _teacher(tokens, fn=_posterior):
  p = np.bincount(exact.state_index(tokens, S), minlength=S**D) / len(tokens)
  return di4c.Teacher(denoisers.from_function(fn), jnp.asarray(p, jnp.float32), "posterior")


def _config(sample_every=0):
  c = configuration.distill_base_config("sdtt")
  c.teacher.kind = "user"
  c.process = dict(name="masked", schedule="linear")
  c.model = dict(width=16, depth=1, heads=2, positions="learned")
  c.distill.update(num_latents=2, t_sampling="uniform", data_weight=1.0)
  # batch 8: one example per device of the 8 faked by conftest (the sharded path).
  c.train.update(
    batch_size=8, num_steps=4, log_every=2, ckpt_every=2, sample_every=sample_every, sample_steps=2
  )
  return c


def _leaves_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(workdir, final state) of a 4-step run, never stopped, with the sample hook at step 4."""
  w = str(tmp_path_factory.mktemp("byo") / "student")
  tokens = _tokens()
  state = distill.distill_student(
    _config(sample_every=4), w, teacher=_teacher(tokens), tokens=tokens
  )
  return w, jax.device_get(state)


def test_stopped_and_resumed_equals_uninterrupted(uninterrupted, tmp_path, monkeypatch):
  src, final = uninterrupted
  tokens, w = _tokens(), str(tmp_path / "student")
  teacher = _teacher(tokens)
  # A preemption notice at step 2: the loop saves step 2 and raises.
  monkeypatch.setattr(
    trainer._Preemption, "reached", lambda self, step: trainer.Preempted if step == 2 else None
  )
  with pytest.raises(trainer.Preempted):
    distill.distill_student(_config(), w, teacher=teacher, tokens=tokens)
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == ["2"]
  monkeypatch.undo()
  resumed = distill.distill_student(_config(), w, teacher=teacher, tokens=tokens)
  assert int(resumed.step) == 4
  for field in ("params", "ema_params", "opt_state"):
    _leaves_equal(getattr(final, field), getattr(resumed, field))
  # The sample hook drew a grid at step 4.
  assert os.path.exists(os.path.join(src, "samples", "distill_0000004.npz"))

  # Provenance: the checksum of the teacher's frozen parameters.
  meta = checkpoints.load_params(w, jax.device_get(resumed.params))[1]
  assert meta["provenance"] == {"kind": "user", "checksum": checkpoints.checksum(teacher.frozen)}
  other = di4c.Teacher(teacher.denoise, teacher.frozen * 0.5, "posterior, other law")
  with pytest.raises(checkpoints.ProvenanceChanged, match="checksum"):
    distill.distill_student(_config(), w, teacher=other, tokens=tokens)

  # The run loads and samples without the teacher or the tokens.
  run = runs.load_run(w)
  assert run.spec == pipeline.DataSpec("array", S, D, 0, None, "tokens")
  _leaves_equal(run.params, final.ema_params)
  x = runs.sample(run, 4, 2)
  assert x.shape == (4, D) and x.min() >= 0 and x.max() < S
  # The teacher, passed again, is a run of its own; another one is refused.
  t_run = runs.teacher_run(run, teacher)
  assert t_run.describe().startswith("posterior (checksum")
  with pytest.raises(ValueError, match="not the one"):
    runs.teacher_run(run, other)
  with pytest.raises(ValueError, match="pass it"):
    runs.teacher_run(run)


def _wide(p, x_t, t):  # the mask state's logit left in: S + 1 values per token
  return jnp.concatenate([_posterior(p, x_t, t), jnp.zeros(x_t.shape + (1,))], -1)


@pytest.mark.parametrize(
  "change, match",
  [
    (dict(fn=_wide), r"returns 4 logits per token, but the data's vocabulary has 3 .*mask"),
    (
      dict(fn=lambda p, x, t: _posterior(p, x, t)[:, :-1]),
      r"\(2, 3, 3\) for x_t of shape \(2, 4\)",
    ),
    (dict(data="tiny"), r"config.data.name='tiny' names a data set"),
    (dict(kind="network"), r"set config.teacher.kind='user'"),
    (dict(teacher=None), r"needs the teacher itself"),
  ],
)
def test_a_wrong_teacher_or_data_is_a_clear_error(change, match):
  tokens = _tokens(64)
  c = _config()
  if "data" in change:
    c.data.name = change["data"]
  if "kind" in change:
    c.teacher.kind = change["kind"]
  teacher = _teacher(tokens, change.get("fn", _posterior))
  if "teacher" in change:
    teacher = None
  with pytest.raises(ValueError, match=match):
    distill.setup_student(c, teacher, tokens)


def test_vocabulary_from_the_tokens_can_be_raised_for_the_teacher():
  """Tokens that never use the top value: the teacher's 4 values fit once
  config.data.vocab_size says so (the fix the error names)."""
  tokens = _tokens(64)
  data, spec, _ = pipeline.array_source(configuration.data_config("array"), tokens)
  assert (data.vocab_size, data.length, data.num_classes) == (S, D, 0)
  data, spec, _ = pipeline.array_source(configuration.data_config("array", vocab_size=4), tokens)
  assert spec == pipeline.DataSpec("array", S + 1, D, 0, None, "tokens")
  teacher = di4c.user_teacher(_teacher(tokens, _wide), spec, processes.Masked(S + 1, "linear"))
  assert teacher.provenance == {"kind": "user", "checksum": checkpoints.checksum(teacher.frozen)}
  with pytest.raises(ValueError, match="below the largest token"):
    pipeline.array_source(configuration.data_config("array", vocab_size=2), tokens)
