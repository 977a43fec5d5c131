"""The attention of the forwards that attend only to their own tokens: the no-cache forward
(the update's log-probs, SFT) and the prefill of a cache. A cached decode step reads the
cache instead (kernels/ragged_attention, `Decoder.attention_impl`).

    out_BTF = attend(q_BTHD, k_BSKD, v_BSKD, mask_BTS, impl="reference")

`impl` ("model.prefill_attention"):
- "reference": `attend_reference`, which materialises the `[B, H, T, S]` float32 scores;
- "xla": `jax.nn.dot_product_attention(implementation="xla")`, the same function written by
  JAX (still materialised; what "cudnn" is checked against on CPU);
- "cudnn": cuDNN's fused flash attention through `jax.nn.dot_product_attention`: GPU only,
  bfloat16 or float16, head_dim a multiple of 8 and at most 128, T and S even (cuDNN's
  rule for a masked training pass); anywhere else a ValueError that says which;
- "auto": "cudnn" where it applies, else "reference" (so CPU runs stay bit-identical).

The decoder's mask is general (left padding in prompts, padding between prompt and
completion, segments of packed rows), so it goes in as a boolean mask, which cuDNN turns
into an additive bias; `is_causal` lets cuDNN skip the blocks above the diagonal. None of
the three implementations equals another bit for bit: the scale is a division in the
reference and a product here, and the reductions run in other orders.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.ragged_attention import attend_reference

PREFILL_IMPLS = ("auto", "cudnn", "reference", "xla")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 holds on every GPU cuDNN takes


def cudnn_problem(q_BTHD: jax.Array, k_BSKD: jax.Array) -> str | None:
    """Why cuDNN's flash attention cannot take these arguments here (None: it can)."""
    platform = jax.default_backend()
    if platform != "gpu":
        return f"cuDNN attention runs on GPU, not on platform {platform!r}"
    if q_BTHD.dtype not in _CUDNN_DTYPES:
        return f"cuDNN flash attention takes bfloat16 or float16, not dtype {q_BTHD.dtype}"
    d = q_BTHD.shape[-1]
    if d % 8 or d > _CUDNN_MAX_HEAD_DIM:
        return f"cuDNN needs head_dim a multiple of 8 and <= {_CUDNN_MAX_HEAD_DIM}, got {d}"
    t, s = q_BTHD.shape[1], k_BSKD.shape[1]
    if t % 2 or s % 2:
        return f"cuDNN needs even sequence lengths with a mask, got T={t}, S={s}"
    return None


def attend(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array, mask_BTS: jax.Array,
           impl: str = "reference") -> jax.Array:
    """Grouped-query attention `[B, T, H * D]` of T queries over S = T keys (key `s` of a row
    is visible to query `t` iff `mask_BTS[b, t, s]`, which must imply `s <= t`)."""
    if impl not in PREFILL_IMPLS:
        raise ValueError(f"prefill_attention={impl!r}; valid: {PREFILL_IMPLS}")
    problem = cudnn_problem(q_BTHD, k_BSKD)
    if impl == "auto":
        impl = "reference" if problem else "cudnn"
    if impl == "reference":
        return attend_reference(q_BTHD, k_BSKD.transpose(0, 2, 1, 3),
                                v_BSKD.transpose(0, 2, 1, 3), mask_BTS)
    if impl == "cudnn" and problem:
        raise ValueError(f"prefill_attention='cudnn': {problem}; 'auto' falls back to the "
                         "reference there")
    b, t, h, d = q_BTHD.shape
    out = jax.nn.dot_product_attention(q_BTHD, k_BSKD, v_BSKD, mask=mask_BTS[:, None],
                                       is_causal=True, implementation=impl)
    return out.reshape(b, t, h * d)
