"""Decode attention over a KV cache with per-row lengths: T = k+1 new query tokens per row.

    out_BTF = ragged_attention(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, impl="auto")

Query `t` of row `b` sits at cache slot `q_slot_B[b] + t` and attends the slots `s` with
`kv_start_B[b] <= s <= q_slot_B[b] + t`: left padding before `kv_start`, the row's earlier
tokens, and the new tokens up to itself (causal among the T). Keys and values are the cache
layout `[B, H_kv, S_max, D]`; `F = H * D`, query head `h` reads kv head `h // (H / H_kv)`.

`ragged_attention_reference` (reference.py) masks all `S_max` slots of every row;
`ragged_attention_pallas` reads only each row's valid slots, as flash-decoding does, with
Triton on GPU (triton.py) or Mosaic on TPU (mosaic.py); `impl` picks (kernels/dispatch.py).

Both kernels are checked on CPU in interpret mode against the reference and exported with
`jax.export` for ("cuda",) and ("tpu",) (tests/kernels/test_ragged_attention.py). The
Triton kernel has also run on an H200 against the reference (`python -m bench.kernel_attention
--check`, which times it too). The TPU export runs Pallas's Mosaic lowering to the `tpu`
MLIR dialect; the Mosaic compiler itself (layout inference, the TPU backend) runs only on a
TPU host, and nobody has run this kernel on a TPU yet, so `impl="auto"` leaves TPUs on the
reference.

A query with no valid slot (`kv_start > q_slot + t`, which the cache never produces) gets
zeros from the kernels and a uniform average over all slots from the reference.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.dispatch import (BACKENDS, IMPLS, call_impl, check_backend, default_backend,
                              platform_problem)
from kernels.ragged_attention.mosaic import mosaic_attention
from kernels.ragged_attention.reference import (attend_reference, ragged_attention_reference,
                                                ragged_mask)
from kernels.ragged_attention.triton import triton_attention

__all__ = ["BACKENDS", "IMPLS", "attend_reference", "ragged_attention",
           "ragged_attention_pallas", "ragged_attention_reference", "ragged_mask"]


def _tile_rows(group: int, num_tokens: int, backend: str) -> int:
    rows = group * num_tokens
    if backend == "triton":  # tl.dot wants power-of-two tiles of at least 16
        return max(16, pl.next_power_of_2(rows))
    return pl.cdiv(rows, 8) * 8  # float32 sublanes


def _default_block_s(backend: str) -> int:
    return 64 if backend == "triton" else 512


def _kernel_problem(head_dim: int, block_s: int, backend: str) -> str | None:
    """Why `backend`'s kernel does not apply (None: it does)."""
    power_of_two = lambda n: n >= 16 and pl.next_power_of_2(n) == n  # noqa: E731
    if backend == "triton" and not (power_of_two(block_s) and power_of_two(head_dim)):
        return (f"Triton needs block_s and head_dim powers of two >= 16; "
                f"got block_s={block_s}, head_dim={head_dim}")
    return platform_problem(backend)


def ragged_attention_pallas(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *,
                            interpret: bool = False, block_s: int | None = None,
                            num_splits: int | None = None, backend: str | None = None):
    """The reference's function, reading only each row's valid slots.

    `backend` is "triton" (GPU) or "mosaic" (TPU), by default the one of the default device;
    `block_s` is the key block (Triton: a power of two >= 16); `num_splits` (Triton only)
    overrides how many programs share each row. A ValueError where the kernel does not
    apply: a head_dim or block_s Triton does not take, or a platform the backend does not
    lower for (CPU runs either in interpret mode).
    """
    backend = check_backend(backend)
    b, t, h, d = q_BTHD.shape
    kv = k_BKSD.shape[1]
    if h % kv:
        raise ValueError(f"{h} query heads do not split evenly over {kv} kv heads")
    block_s = block_s or _default_block_s(backend)
    problem = _kernel_problem(d, block_s, backend)
    if problem:
        raise ValueError(problem)
    group = h // kv
    rows = _tile_rows(group, t, backend)
    q_BKTGD = q_BTHD.reshape(b, t, kv, group, d).transpose(0, 2, 1, 3, 4)
    q_BKRD = jnp.pad(q_BKTGD.reshape(b, kv, t * group, d),
                     ((0, 0), (0, 0), (0, rows - t * group), (0, 0)))
    scalars = (q_slot_B.astype(jnp.int32), kv_start_B.astype(jnp.int32))
    if backend == "triton":
        o_BKRD = triton_attention(q_BKRD, k_BKSD, v_BKSD, *scalars, group=group, num_tokens=t,
                                  block_s=block_s, num_splits=num_splits, interpret=interpret)
    else:
        o_BKRD = mosaic_attention(q_BKRD, k_BKSD, v_BKSD, *scalars, group=group, num_tokens=t,
                                  block_s=block_s, interpret=interpret)
    out_BKTGD = o_BKRD[:, :, :t * group].reshape(b, kv, t, group, d)
    return out_BKTGD.transpose(0, 2, 1, 3, 4).reshape(b, t, h * d).astype(v_BKSD.dtype)


def _default_problem(q_BTHD, *_):
    backend = default_backend()
    return _kernel_problem(q_BTHD.shape[-1], _default_block_s(backend), backend)


def ragged_attention(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *, impl: str = "auto"):
    """`impl` (kernels/dispatch.py): "reference", "pallas" (interpret mode on CPU; raises
    where the kernel does not apply), or "auto": the kernel on GPU where it applies, the
    reference elsewhere."""
    return call_impl(impl, ragged_attention_reference, ragged_attention_pallas,
                     _default_problem, q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B)
