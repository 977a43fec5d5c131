"""The train state: everything a resumed run needs, as one pytree (invariant 3).

`step` is also the data position (see tasks/batches.py), and the rollout key of a step is
`fold_in(rng, step)`, so restoring this pytree reproduces the run exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrl import sharding
from jaxrl.config_utils import at_least


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """`config.optim`: AdamW with global-norm clipping (0 = off) and a linear warmup."""

    warmup_steps: int
    weight_decay: float
    b1: float
    b2: float
    grad_clip: float

    def __post_init__(self):
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            at_least(f"config.optim.{name}", getattr(self, name), 0)
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"config.optim.{name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: train steps taken (SFT batches, then RL rollout batches)
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data (jax.random.key_data): orbax saves plain arrays
    ref_params: Any  # frozen reference policy for the KL penalty; None without one
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    history: Any = None  # rollout.drafter.History for speculative rollouts (DAS); else None

    def key(self, *salt: int) -> jax.Array:
        """The PRNG key of this step, optionally folded with a salt (e.g. a minibatch)."""
        key = jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
        for s in salt:
            key = jax.random.fold_in(key, s)
        return key


def make_optimizer(opt: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """AdamW on `schedule` with global-norm clipping (`opt.grad_clip`, 0 = off)."""
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))
    return optax.chain(*parts)


def create(params, tx: optax.GradientTransformation, seed: int, with_reference: bool,
           history=None) -> TrainState:
    # The reference gets its own buffers: the steps donate the state, and XLA refuses to
    # donate one buffer twice.
    return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)),
                      ref_params=jax.tree.map(jnp.copy, params) if with_reference else None,
                      tx=tx, history=history)


def shardings(state: TrainState, param_axes, layout: sharding.Layout) -> TrainState:
    """Where each leaf of `state` lives: params and the reference policy by their logical
    axes, the optimizer state as its params (optax states mirror the param tree; counts
    replicated), the DAS history's prompt slots over the batch axes, the rest replicated."""
    params = layout.tree(param_axes, state.params)
    batch = lambda x: layout.sharding(("batch",), x.shape)  # noqa: E731
    return state.replace(
        step=layout.replicated, rng=layout.replicated, params=params,
        opt_state=optax.tree_map_params(state.tx, lambda _, s: s, state.opt_state, params,
                                        transform_non_params=lambda _: layout.replicated),
        ref_params=None if state.ref_params is None else params,
        history=None if state.history is None else jax.tree.map(batch, state.history))


def apply_gradients(state: TrainState, grads) -> tuple[TrainState, dict]:
    """One optimizer step; a non-finite gradient skips it (state unchanged but for `step`)."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    state = state.replace(params=keep(params, state.params),
                          opt_state=keep(opt_state, state.opt_state))
    return state, {"grad_norm": grad_norm, "skipped_nonfinite": (~finite).astype(jnp.float32)}
