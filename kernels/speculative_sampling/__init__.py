"""Speculative sampling: the position-keyed sample at each of the K = D + 1 positions of a
row, and how many of the row's D drafts match it (the verification step of speculative
decoding).

    tokens_BK, accepted_B, logprobs_BK, sample_logprobs_BK = speculative_sample(
        logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B, keys_BK2)

`speculative_sample_reference` (reference.py) is `kernels.sampling.sample_reference` on the
B*K rows plus the count. `speculative_sample_pallas` computes the same tokens without a sort
and without a [B, K, V] noise array, with Triton on GPU (triton.py) or Mosaic on TPU
(mosaic.py), which share the noise bound and the top-k/top-p bisection (common.py); CPU runs
either in interpret mode. `impl` picks (kernels/dispatch.py).

Where a kernel does not apply (logits of a dtype the backend does not take: Triton
float32/bfloat16/float16, Mosaic float32/bfloat16, the float types a TPU computes in; an
empty vocabulary; a platform the backend does not lower for), `speculative_sample_pallas`
and `impl="pallas"` raise a ValueError saying why, and `impl="auto"` takes the reference.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.dispatch import (BACKENDS, IMPLS, call_impl, check_backend, default_backend,
                              platform_problem)
from kernels.speculative_sampling import mosaic, triton
from kernels.speculative_sampling.common import thresholds
from kernels.speculative_sampling.reference import (accepted_count, check_shapes, per_position,
                                                    speculative_sample_reference)

__all__ = ["BACKENDS", "IMPLS", "accepted_count", "speculative_sample",
           "speculative_sample_pallas", "speculative_sample_reference"]

_BACKEND = {"triton": triton, "mosaic": mosaic}


def _kernel_problem(logits_BKV, backend: str) -> str | None:
    """Why `backend`'s kernels do not apply to these logits (None: they do)."""
    dtypes = _BACKEND[backend].DTYPES
    if logits_BKV.dtype not in dtypes:
        return (f"logits of dtype {logits_BKV.dtype}: the {backend} kernels take "
                f"{', '.join(jnp.dtype(d).name for d in dtypes)}")
    if logits_BKV.shape[-1] == 0:
        return f"logits of shape {logits_BKV.shape}: an empty vocabulary"
    return platform_problem(backend)


def _merge_logsumexp(m_RS, l_RS):
    m_R = jnp.max(m_RS, axis=1)
    m_safe = jnp.where(m_R == -jnp.inf, 0.0, m_R)
    return m_R + jnp.log(jnp.sum(l_RS * jnp.exp(m_RS - m_safe[:, None]), axis=1))


def speculative_sample_pallas(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B,
                              top_p_B, keys_BK2, *, interpret: bool = False,
                              backend: str | None = None, block_v: int | None = None,
                              num_splits: int | None = None):
    """`speculative_sample_reference`'s contract, computed by the Pallas kernels.

    `backend`: "triton" (GPU) or "mosaic" (TPU), by default the one of the default device.
    `block_v`: the vocabulary tile; Triton: a power of two >= 256 (default 1024); Mosaic: a
    multiple of 128 (default 8192). `num_splits` (Triton only): programs per row (default:
    enough for ~2048 programs). A ValueError where the kernels do not apply (module
    docstring).
    """
    backend = check_backend(backend)
    check_shapes(logits_BKV, drafts_BD, keys_BK2)
    block_v = _BACKEND[backend].BLOCK_V if block_v is None else block_v
    if backend == "triton" and (block_v < triton.COUNT_BLOCK
                                or pl.next_power_of_2(block_v) != block_v):
        raise ValueError(f"block_v={block_v}: Triton needs a power of two >= {triton.COUNT_BLOCK}")
    if backend == "mosaic" and (block_v <= 0 or block_v % 128):
        raise ValueError(f"block_v={block_v}: Mosaic needs a positive multiple of 128 (lanes)")
    if backend == "mosaic" and num_splits is not None:
        raise ValueError(f"num_splits={num_splits}: only the Triton kernel splits rows; the "
                         "Mosaic kernel walks each row block's vocabulary in order")
    problem = _kernel_problem(logits_BKV, backend)
    if problem:
        raise ValueError(problem)
    b, k, v = logits_BKV.shape
    logits_RV = logits_BKV.reshape(b * k, v)
    t_R = per_position(temperature_B.astype(jnp.float32), k)
    if backend == "triton":
        splits, tiles = triton.layout(b * k, v, block_v, num_splits)
        count_fn = functools.partial(triton.counts, splits=splits,
                                     tiles=tiles * (block_v // triton.COUNT_BLOCK),
                                     interpret=interpret)
        sample_fn = functools.partial(triton.sample_partials, block_v=block_v, splits=splits,
                                      tiles=tiles, interpret=interpret)
    else:
        count_fn = functools.partial(mosaic.counts, block_v=block_v, interpret=interpret)
        sample_fn = functools.partial(mosaic.sample_partials, block_v=block_v,
                                      interpret=interpret)
    threshold_R = thresholds(logits_RV, t_R, per_position(top_k_B.astype(jnp.int32), k),
                             per_position(top_p_B.astype(jnp.float32), k), count_fn)
    m_raw, l_raw, m_proc, l_proc, best_RS, best_index_RS = sample_fn(
        logits_RV, t_R, threshold_R, keys_BK2.reshape(b * k, 2).astype(jnp.uint32))
    # The first split holding the maximum holds the lowest index among the maxima.
    winner_R1 = jnp.argmax(best_RS, axis=1)[:, None]
    tokens_R = jnp.take_along_axis(best_index_RS, winner_R1, axis=1)[:, 0]
    x_R = jnp.take_along_axis(logits_RV, tokens_R[:, None], axis=1)[:, 0].astype(jnp.float32)
    greedy_R = t_R <= 0
    scaled_R = x_R / jnp.where(greedy_R, 1.0, t_R)  # the winner is kept: its processed logit
    logprobs_R = x_R - _merge_logsumexp(m_raw, l_raw)
    sample_logprobs_R = jnp.where(greedy_R, 0.0, scaled_R - _merge_logsumexp(m_proc, l_proc))
    tokens_BK = tokens_R.reshape(b, k)
    return (tokens_BK, accepted_count(tokens_BK, drafts_BD, num_drafts_B),
            logprobs_R.reshape(b, k), sample_logprobs_R.reshape(b, k))


def _default_problem(logits_BKV, *_):
    return _kernel_problem(logits_BKV, default_backend())


def speculative_sample(logits_BKV, drafts_BD, num_drafts_B, temperature_B, top_k_B, top_p_B,
                       keys_BK2, *, impl: str = "auto"):
    """`impl` (kernels/dispatch.py): "reference", "pallas" (Triton on GPU, Mosaic on TPU,
    interpret mode on CPU; raises where the kernels do not apply), or "auto": the kernel on
    GPU where it applies, the reference elsewhere."""
    return call_impl(impl, speculative_sample_reference, speculative_sample_pallas,
                     _default_problem, logits_BKV, drafts_BD, num_drafts_B, temperature_B,
                     top_k_B, top_p_B, keys_BK2)
