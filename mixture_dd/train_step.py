"""One training step: the state, the optimizer, the EMA and the step function.

`make_step` gives the pure (state, batch, key, frozen) -> (state, metrics)
that `trainer.fit` jits over a mesh and `trainer.fit_scanned` scans; the
state is the parameters, their EMA copy and the optimizer's state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mixture_dd import networks


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up, then constant or cosine decay; global-norm clip.

  optim.latent_lr_mult (default 1) scales the learning rate of the
  student's latent path (`networks.is_latent_param`: the `LATENT_MODULE` sub-tree
  and the student-only position embedding): it is new
  at the start of distillation while the rest is a trained teacher.
  """
  warm = max(int(optim.warmup_steps), 0)

  def schedule(peak):
    if optim.schedule == "cosine":
      return optax.warmup_cosine_decay_schedule(
        0.0, peak, max(warm, 1), max(num_steps, warm + 1), end_value=0.1 * peak
      )
    return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warm, 1)), optax.constant_schedule(peak)],
      [max(warm, 1)],
    )

  def adamw(peak):
    return optax.adamw(schedule(peak), b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)

  mult = float(optim.get("latent_lr_mult", 1.0))
  if mult == 1.0:
    opt = adamw(optim.lr)
  else:

    def labels(params):
      flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
      return flax.traverse_util.unflatten_dict(
        {k: ("latent" if networks.is_latent_param(k) else "rest") for k in flat}
      )

    opt = optax.multi_transform({"latent": adamw(optim.lr * mult), "rest": adamw(optim.lr)}, labels)
  return optax.chain(optax.clip_by_global_norm(optim.clip), opt)


def init_params(model, seed: int):
  """The model's initial parameters, one jitted program (eager flax init
  compiles every op separately: seconds on a CPU)."""

  @jax.jit
  def init(key):
    x = jnp.zeros((1, model.length), jnp.int32)
    kw = {"lam": jnp.zeros((1,))} if model.latent else {}
    return model.init(key, x, jnp.zeros((1,)), **kw)["params"]

  return init(jax.random.key(seed))


def init_state(params, optimizer) -> TrainState:
  """Step 0: the parameters, their EMA copy and the optimizer's state (jitted:
  eager op-by-op dispatch would compile every small op separately)."""

  @jax.jit
  def init(params):
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=optimizer.init(params),
    )

  return init(params)


NONFINITE_PARAMS = "nonfinite_params"  # a metric: count of NaN/Inf parameter entries


def ema_decay_at(step, decay: float, warmup: bool = True):
  """The EMA decay used after optimizer step `step` (0-based).

  With warm-up (tauLDR): min(decay, (1 + n) / (10 + n)). Without it, a
  0.9999 EMA after 5000 steps still holds (0.9999)^5000 = 61 % of the
  initial weights; with it, the EMA forgets the start within ~10 steps and
  averages over the last ~n/10 steps until n reaches 1 / (1 - decay).
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  n = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def make_step(loss_fn: Callable, optimizer, ema_decay: float, ema_warmup: bool = True) -> Callable:
  """(state, batch, key, frozen) -> (state, metrics).

  `loss_fn(params, batch, key, frozen)`; `frozen` holds what the loss reads
  but never trains (the distillation teacher's parameters), replicated and
  passed as an argument so that it is never baked into the program. The EMA
  uses `ema_decay_at` (warm-up on by default).
  """

  def step(state: TrainState, batch, key, frozen=None):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, key, frozen
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(state.step, ema_decay, ema_warmup)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    # Finite loss and gradients can still overflow the parameters (a huge
    # learning rate): count the non-finite entries of the updated state.
    bad = sum(jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves((params, ema)))
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), **{NONFINITE_PARAMS: bad})
    return TrainState(state.step + 1, params, ema, opt_state), metrics

  return step
