"""Decode attention over a KV cache with per-row lengths: T = k+1 new query tokens per row.

    out_BTF = ragged_attention(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, impl="auto")

Query `t` of row `b` sits at cache slot `q_slot_B[b] + t` and attends the slots `s` with
`kv_start_B[b] <= s <= q_slot_B[b] + t`: left padding before `kv_start`, the row's earlier
tokens, and the new tokens up to itself (causal among the T). Keys and values are the cache
layout `[B, H_kv, S_max, D]`; `F = H * D`, query head `h` reads kv head `h // (H / H_kv)`.

`ragged_attention_reference` builds that mask over all `S_max` slots and calls
`attend_reference`, the decoder's attention. It reads every slot of every row: a batch of
rows of very different lengths costs as much as if all were full.

`ragged_attention_pallas` reads only each row's valid slots, as flash-decoding does:

- GPU (Triton): a program per (row, kv head, split) takes the `G = H / H_kv` query heads of
  its kv head times the T tokens as one `[R, D]` tile (R = G*T padded to a power of two,
  at least 16, for `tl.dot`), walks its share of the row's key blocks from `kv_start` up to
  the row's end `q_slot + T` with masked loads at both ragged ends, keeps an online softmax
  and writes an unnormalised partial (out, max, sum). A small jnp combine merges the splits.
  Splits divide each row's own valid range, so a long row and a short row in one batch
  both spread over the same number of programs.
- TPU (Mosaic): the grid is (row, kv head, key block), the last axis sequential with the
  softmax state in VMEM scratch. The row lengths arrive by scalar prefetch; the key block
  index map clamps to the row's valid blocks, so the steps past a row's end revisit the
  block already in VMEM and copy nothing, and `pl.when` skips their arithmetic. No splits:
  a TPU core walks the grid in order, and the (row, head) axes are split across cores.

Both are checked on CPU in interpret mode against the reference and exported with
`jax.export` for ("cuda",) and ("tpu",) (tests/kernels/test_ragged_attention.py). The
Triton kernel has also run on an H200 against the reference (`bench/kernels_attention.py
--check`, which times it too). The TPU export runs Pallas's Mosaic lowering to the `tpu`
MLIR dialect; the Mosaic compiler itself (layout inference, the TPU backend) runs only on a
TPU host, and nobody has run this kernel on a TPU yet, so `impl="auto"` leaves TPUs on the
reference.

A query with no valid slot (`kv_start > q_slot + t`, which the cache never produces) gets
zeros from the kernel and a uniform average over all slots from the reference.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

_NEG = -1e30  # finite, so a fully masked (padding) query row gives no NaN
IMPLS = ("auto", "pallas", "reference")
BACKENDS = ("triton", "mosaic")


def attend_reference(q_BTHD: jax.Array, k_BKSD: jax.Array, v_BKSD: jax.Array,
                     mask_BTS: jax.Array) -> jax.Array:
    """Grouped-query attention: softmax in float32, masked keys get zero weight."""
    b, t, h, d = q_BTHD.shape
    kv = k_BKSD.shape[1]
    q_BKGTD = q_BTHD.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgtd,bksd->bkgts", q_BKGTD, k_BKSD,
                        preferred_element_type=jnp.float32) / math.sqrt(d)
    scores = jnp.where(mask_BTS[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSD.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v_BKSD)
    return out.reshape(b, t, h * d)


def ragged_mask(q_slot_B: jax.Array, kv_start_B: jax.Array, num_tokens: int,
                max_len: int) -> jax.Array:
    """`mask_BTS`: query t of row b sees slots kv_start..q_slot+t."""
    slot_11S = jnp.arange(max_len)[None, None, :]
    last_BT1 = (q_slot_B[:, None] + jnp.arange(num_tokens))[..., None]
    return (slot_11S >= kv_start_B[:, None, None]) & (slot_11S <= last_BT1)


def ragged_attention_reference(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B) -> jax.Array:
    """Reads all S_max slots of every row, masked to each query's valid range."""
    mask_BTS = ragged_mask(q_slot_B, kv_start_B, q_BTHD.shape[1], k_BKSD.shape[2])
    return attend_reference(q_BTHD, k_BKSD, v_BKSD, mask_BTS)


def _dot_precision(dtype):
    # Triton's default for a float32 dot is tf32; float32 must match the reference to 1e-5.
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _online_softmax_step(carry, scores_RS, valid_RS, v_SD):
    """One key block of flash attention: rescale the running (out, max, sum) and add."""
    o_RD, m_R1, l_R1 = carry
    m_new_R1 = jnp.maximum(m_R1, jnp.max(jnp.where(valid_RS, scores_RS, _NEG), axis=1,
                                         keepdims=True))
    # Zero invalid weights explicitly: while a row has seen no valid key, m_new is _NEG and
    # exp(_NEG - m_new) would be 1.
    p_RS = jnp.where(valid_RS, jnp.exp(scores_RS - m_new_R1), 0.0)
    correction_R1 = jnp.exp(m_R1 - m_new_R1)
    l_R1 = correction_R1 * l_R1 + jnp.sum(p_RS, axis=1, keepdims=True)
    pv_RD = jax.lax.dot(p_RS.astype(v_SD.dtype), v_SD, precision=_dot_precision(v_SD.dtype),
                        preferred_element_type=jnp.float32)
    return correction_R1 * o_RD + pv_RD, m_new_R1, l_R1


def _scores(q_RD, k_SD):
    dims = (((1,), (1,)), ((), ()))
    s_RS = jax.lax.dot_general(q_RD, k_SD, dims, precision=_dot_precision(k_SD.dtype),
                               preferred_element_type=jnp.float32)
    return s_RS / math.sqrt(q_RD.shape[-1])


def _div(a, b):
    """Integer division of non-negative int32s; `//` would add sign fix-ups that Mosaic can
    lower only for a known TPU generation."""
    return jax.lax.div(a, jnp.asarray(b, jnp.int32))


def _cdiv(a, b):
    return _div(a + b - 1, b)


def _causal_RS(slot_1S, q_slot, rows: int, group: int):
    """Tile row r holds token t = r // G (rows are t-major), which sees slot s iff
    s <= q_slot + t, i.e. r >= (s - q_slot) * G: no vector division. Pad rows (t >= T) see
    every slot up to the row's end, like the last token."""
    row_R1 = jax.lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
    return row_R1 >= (slot_1S - q_slot) * group


def _triton_kernel(q_slot_ref, kv_start_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *,
                   block_s: int, group: int, num_tokens: int, max_len: int):
    rows, d = q_ref.shape
    q_slot, kv_start = q_slot_ref[()], kv_start_ref[()]
    end = jnp.minimum(q_slot + num_tokens, max_len)  # writes past S_max were dropped
    first_blk = _div(kv_start, block_s)
    num_blk = jnp.maximum(_cdiv(end, block_s) - first_blk, 0)
    per_split = _cdiv(num_blk, pl.num_programs(2))
    lo = first_blk + pl.program_id(2) * per_split
    hi = jnp.minimum(lo + per_split, first_blk + num_blk)

    q_RD = q_ref[...]

    def body(blk, carry):
        slot_S = blk * block_s + jnp.arange(block_s, dtype=jnp.int32)
        load_S = (slot_S >= kv_start) & (slot_S < end)
        k_SD = plgpu.load(k_ref.at[pl.ds(blk * block_s, block_s), :], mask=load_S[:, None],
                          other=0.0)
        v_SD = plgpu.load(v_ref.at[pl.ds(blk * block_s, block_s), :], mask=load_S[:, None],
                          other=0.0)
        valid_RS = load_S[None, :] & _causal_RS(slot_S[None, :], q_slot, rows, group)
        return _online_softmax_step(carry, _scores(q_RD, k_SD), valid_RS, v_SD)

    init = (jnp.zeros((rows, d), jnp.float32), jnp.full((rows, 1), _NEG, jnp.float32),
            jnp.zeros((rows, 1), jnp.float32))
    o_ref[...], m_ref[...], l_ref[...] = jax.lax.fori_loop(lo, hi, body, init)


def _num_splits(batch: int, kv_heads: int, rows: int, max_len: int) -> int:
    """About 4 programs per SM of a 132-SM Hopper, to keep enough loads in flight; but each
    split writes and the combine reads an [R, D] float32 partial, so a split should cover at
    least 16*R slots (partials then cost at most ~1/4 of the cache bytes of a half-full row)."""
    return max(1, min(pl.cdiv(528, batch * kv_heads), max_len // (16 * rows)))


def _combine_splits(o_BKNRD, m_BKNR1, l_BKNR1):
    w_BKNR1 = jnp.exp(m_BKNR1 - jnp.max(m_BKNR1, axis=2, keepdims=True))
    l_BKR1 = jnp.sum(w_BKNR1 * l_BKNR1, axis=2)
    o_BKRD = jnp.sum(w_BKNR1 * o_BKNRD, axis=2)
    return o_BKRD / jnp.where(l_BKR1 > 0, l_BKR1, 1.0)


def _triton_attention(q_BKRD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *, group, num_tokens,
                      block_s, num_splits, interpret):
    b, kv, rows, d = q_BKRD.shape
    s_max = k_BKSD.shape[2]
    n = num_splits or _num_splits(b, kv, rows, s_max)
    kernel = functools.partial(_triton_kernel, block_s=block_s, group=group,
                               num_tokens=num_tokens, max_len=s_max)
    scalar = pl.BlockSpec((None,), lambda i, h, j: (i,))
    cache = pl.BlockSpec((None, None, s_max, d), lambda i, h, j: (i, h, 0, 0))
    o, m, l = pl.pallas_call(
        kernel, grid=(b, kv, n),
        in_specs=[scalar, scalar, pl.BlockSpec((None, None, rows, d), lambda i, h, j: (i, h, 0, 0)),
                  cache, cache],
        out_specs=[pl.BlockSpec((None, None, None, rows, w), lambda i, h, j: (i, h, j, 0, 0))
                   for w in (d, 1, 1)],
        out_shape=[jax.ShapeDtypeStruct((b, kv, n, rows, w), jnp.float32) for w in (d, 1, 1)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret, name="ragged_attention",
    )(q_slot_B, kv_start_B, q_BKRD, k_BKSD, v_BKSD)
    return _combine_splits(o, m, l)


def _mosaic_kernel(q_slot_ref, kv_start_ref, q_ref, k_ref, v_ref, o_ref, o_acc, m_acc, l_acc,
                   *, block_s: int, group: int, num_tokens: int, max_len: int):
    i, j = pl.program_id(0), pl.program_id(2)
    rows = q_ref.shape[0]
    q_slot, kv_start = q_slot_ref[i], kv_start_ref[i]
    end = jnp.minimum(q_slot + num_tokens, max_len)
    blk = _div(kv_start, block_s) + j

    @pl.when(j == 0)
    def _():
        o_acc[...] = jnp.zeros_like(o_acc)
        m_acc[...] = jnp.full_like(m_acc, _NEG)
        l_acc[...] = jnp.zeros_like(l_acc)

    @pl.when(blk * block_s < end)
    def _():
        def loadable(shape, dim):
            slot = blk * block_s + jax.lax.broadcasted_iota(jnp.int32, shape, dim)
            return slot, (slot >= kv_start) & (slot < end)

        slot_1S, load_1S = loadable((1, block_s), 1)
        valid_RS = load_1S & _causal_RS(slot_1S, q_slot, rows, group)
        # Slots past S_max in a partial last block hold whatever was in VMEM: 0 * NaN is NaN.
        v_SD = jnp.where(loadable((block_s, 1), 0)[1], v_ref[...], 0)
        carry = (o_acc[...], m_acc[...], l_acc[...])
        o_acc[...], m_acc[...], l_acc[...] = _online_softmax_step(
            carry, _scores(q_ref[...], k_ref[...]), valid_RS, v_SD)

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        l_R1 = l_acc[...]
        o_ref[...] = (o_acc[...] / jnp.where(l_R1 > 0, l_R1, 1.0)).astype(o_ref.dtype)


def _mosaic_attention(q_BKRD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *, group, num_tokens,
                      block_s, interpret):
    b, kv, rows, d = q_BKRD.shape
    s_max = k_BKSD.shape[2]
    block_s = min(block_s, s_max)
    num_blk = pl.cdiv(s_max, block_s)

    def kv_block(i, h, j, q_slot_B, kv_start_B):
        # Steps past the row's last block keep its index: the pipeline then copies nothing.
        end = jnp.minimum(q_slot_B[i] + num_tokens, s_max)
        first = _div(kv_start_B[i], block_s)
        last = jnp.maximum(_cdiv(end, block_s) - 1, first)
        return i, h, jnp.minimum(first + j, last), 0

    tile = pl.BlockSpec((None, None, rows, d), lambda i, h, j, *_: (i, h, 0, 0))
    cache = pl.BlockSpec((None, None, block_s, d), kv_block)
    kernel = functools.partial(_mosaic_kernel, block_s=block_s, group=group,
                               num_tokens=num_tokens, max_len=s_max)
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=(b, kv, num_blk), in_specs=[tile, cache, cache],
            out_specs=tile,
            scratch_shapes=[pltpu.VMEM((rows, d), jnp.float32),
                            pltpu.VMEM((rows, 1), jnp.float32),
                            pltpu.VMEM((rows, 1), jnp.float32)]),
        out_shape=jax.ShapeDtypeStruct((b, kv, rows, d), jnp.float32),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret, name="ragged_attention",
    )(q_slot_B, kv_start_B, q_BKRD, k_BKSD, v_BKSD)


def _tile_rows(group: int, num_tokens: int, backend: str) -> int:
    rows = group * num_tokens
    if backend == "triton":  # tl.dot wants power-of-two tiles of at least 16
        return max(16, pl.next_power_of_2(rows))
    return pl.cdiv(rows, 8) * 8  # float32 sublanes


def _default_backend() -> str:
    return "mosaic" if jax.default_backend() == "tpu" else "triton"


def ragged_attention_pallas(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *,
                            interpret: bool = False, block_s: int | None = None,
                            num_splits: int | None = None, backend: str | None = None):
    """The reference's function, reading only each row's valid slots.

    `backend` is "triton" (GPU) or "mosaic" (TPU), by default the one of the default device;
    `block_s` is the key block (Triton: a power of two >= 16); `num_splits` (Triton only)
    overrides how many programs share each row.
    """
    backend = backend or _default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; valid: {BACKENDS}")
    b, t, h, d = q_BTHD.shape
    kv = k_BKSD.shape[1]
    if h % kv:
        raise ValueError(f"{h} query heads do not split evenly over {kv} kv heads")
    block_s = block_s or (64 if backend == "triton" else 512)
    if backend == "triton" and not (block_s >= 16 and pl.next_power_of_2(block_s) == block_s
                                    and d >= 16 and pl.next_power_of_2(d) == d):
        raise ValueError(f"Triton needs block_s and head_dim powers of two >= 16; "
                         f"got block_s={block_s}, head_dim={d}")
    group = h // kv
    rows = _tile_rows(group, t, backend)
    q_BKTGD = q_BTHD.reshape(b, t, kv, group, d).transpose(0, 2, 1, 3, 4)
    q_BKRD = jnp.pad(q_BKTGD.reshape(b, kv, t * group, d),
                     ((0, 0), (0, 0), (0, rows - t * group), (0, 0)))
    scalars = (q_slot_B.astype(jnp.int32), kv_start_B.astype(jnp.int32))
    if backend == "triton":
        o_BKRD = _triton_attention(q_BKRD, k_BKSD, v_BKSD, *scalars, group=group, num_tokens=t,
                                   block_s=block_s, num_splits=num_splits, interpret=interpret)
    else:
        o_BKRD = _mosaic_attention(q_BKRD, k_BKSD, v_BKSD, *scalars, group=group, num_tokens=t,
                                   block_s=block_s, interpret=interpret)
    out_BKTGD = o_BKRD[:, :, :t * group].reshape(b, kv, t, group, d)
    return out_BKTGD.transpose(0, 2, 1, 3, 4).reshape(b, t, h * d).astype(v_BKSD.dtype)


def ragged_attention(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B, *, impl: str = "auto"):
    """`impl`: "reference", "pallas" (interpret mode on CPU), or "auto": the kernel on GPU,
    the reference elsewhere (on CPU interpreting the kernel is only slower, and the Mosaic
    kernel has yet to run on a TPU)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; valid: {IMPLS}")
    platform = jax.default_backend()
    if impl == "reference" or (impl == "auto" and platform != "gpu"):
        return ragged_attention_reference(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B)
    return ragged_attention_pallas(q_BTHD, k_BKSD, v_BKSD, q_slot_B, kv_start_B,
                                   interpret=platform == "cpu")
