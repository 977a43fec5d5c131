"""The ragged decode-attention kernels (interpret mode) against their jnp reference, the
decoder's cached steps with each, and the kernels' lowering for CUDA and TPU."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.kv_cache import init_cache
from kernels.ragged_attention import (attend_reference, ragged_attention,
                                      ragged_attention_pallas, ragged_attention_reference,
                                      ragged_mask)

S_MAX = 64
ENDS = np.array([5, 37, 64])  # each row's q_slot + T: ragged, not multiples of the block
KV_START = np.array([0, 3, 10])  # left padding
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def make_inputs(num_tokens, kv_heads, head_dim, dtype, heads=4, seed=0):
    kq, kk, kv_ = jax.random.split(jax.random.key(seed), 3)
    b = len(ENDS)
    q = jax.random.normal(kq, (b, num_tokens, heads, head_dim), jnp.float32)
    # Scaled so that softmax is far from uniform: a wrong mask moves the output a lot.
    k = 2.0 * jax.random.normal(kk, (b, kv_heads, S_MAX, head_dim), jnp.float32)
    v = jax.random.normal(kv_, (b, kv_heads, S_MAX, head_dim), jnp.float32)
    q_slot = jnp.asarray(ENDS - num_tokens, jnp.int32)
    kv_start = jnp.asarray(KV_START, jnp.int32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), q_slot, kv_start


def poison_outside_rows(x_BKSD):
    """NaN in every slot a row must not read: before kv_start and from its end on."""
    slot_1S = np.arange(S_MAX)[None, :]
    outside_BS = (slot_1S < KV_START[:, None]) | (slot_1S >= ENDS[:, None])
    return jnp.where(outside_BS[:, None, :, None], jnp.nan, x_BKSD)


@functools.cache  # one jitted function per setting, so that tests of equal shapes share compiles
def pallas(backend, num_splits=None):
    kw = {} if backend == "mosaic" else {"num_splits": num_splits}
    return jax.jit(functools.partial(ragged_attention_pallas, interpret=True, block_s=16,
                                     backend=backend, **kw))


def assert_close(got, want, dtype):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("head_dim", [16, 32])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("num_tokens", [1, 4])
def test_triton_kernel_matches_reference(num_tokens, kv_heads, head_dim, dtype):
    q, k, v, q_slot, kv_start = make_inputs(num_tokens, kv_heads, head_dim, dtype)
    want = jax.jit(ragged_attention_reference)(q, k, v, q_slot, kv_start)
    # Slots outside a row are NaN for the kernel: it must not read them.
    got = pallas("triton", num_splits=2)(q, poison_outside_rows(k), poison_outside_rows(v),
                                         q_slot, kv_start)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert_close(got, want, dtype)


@pytest.mark.parametrize("num_tokens,kv_heads,dtype", [(1, 1, jnp.float32), (4, 2, jnp.float32),
                                                      (1, 2, jnp.bfloat16), (4, 4, jnp.bfloat16)])
def test_mosaic_kernel_matches_reference(num_tokens, kv_heads, dtype):
    q, k, v, q_slot, kv_start = make_inputs(num_tokens, kv_heads, 32, dtype)
    want = jax.jit(ragged_attention_reference)(q, k, v, q_slot, kv_start)
    got = pallas("mosaic")(q, poison_outside_rows(k), poison_outside_rows(v), q_slot, kv_start)
    assert_close(got, want, dtype)


@pytest.mark.parametrize("num_splits", [1, 8])  # 8: more splits than the longest row's blocks
def test_any_number_of_splits_gives_the_same_answer(num_splits):
    args = make_inputs(4, 2, 16, jnp.float32, seed=1)
    assert_close(pallas("triton", num_splits)(*args), ragged_attention_reference(*args),
                 jnp.float32)


@pytest.mark.parametrize("wrong", ["sees_next_slot", "misses_first_slot"])
def test_an_off_by_one_mask_is_detected(wrong):
    q, k, v, q_slot, kv_start = make_inputs(4, 2, 16, jnp.float32)
    got = pallas("triton", num_splits=2)(q, k, v, q_slot, kv_start)
    # Row 0's end is 5; shift its window by one slot at one end, keeping S_MAX in bounds.
    if wrong == "sees_next_slot":
        mask_BTS = ragged_mask(q_slot + 1, kv_start, 4, S_MAX)
    else:
        mask_BTS = ragged_mask(q_slot, kv_start + 1, 4, S_MAX)
    wrong_out = attend_reference(q, k, v, mask_BTS)
    assert_close(got, ragged_attention_reference(q, k, v, q_slot, kv_start), jnp.float32)
    assert np.max(np.abs(np.asarray(got - wrong_out))) > 100 * TOL[jnp.float32]


def test_impl_choice():
    args = make_inputs(1, 2, 16, jnp.float32)
    # On CPU "auto" is the reference itself.
    np.testing.assert_array_equal(ragged_attention(*args), ragged_attention_reference(*args))
    with pytest.raises(ValueError, match="'triton'.*valid.*'auto', 'pallas', 'reference'"):
        ragged_attention(*args, impl="triton")
    cfg = preset("tiny", dtype="float32", param_dtype="float32")
    with pytest.raises(ValueError, match="'flash'.*valid"):
        Decoder(cfg, attention_impl="flash").init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))


def test_pallas_raises_where_the_kernel_does_not_apply(monkeypatch):
    """A head_dim Triton does not take (8): impl="pallas" raises, naming it, and never
    returns the reference's result; on a GPU (faked: nothing here lowers) "auto" takes the
    reference there, and the Mosaic kernel raises."""
    args = make_inputs(1, 2, 8, jnp.float32)
    error = "Triton needs block_s and head_dim powers of two >= 16; got block_s=64, head_dim=8"
    with pytest.raises(ValueError, match=error):
        ragged_attention(*args, impl="pallas")
    with pytest.raises(ValueError, match="got block_s=24, head_dim=16"):
        ragged_attention_pallas(*make_inputs(1, 2, 16, jnp.float32), backend="triton", block_s=24)
    with pytest.raises(ValueError, match="4 query heads do not split evenly over 3 kv heads"):
        ragged_attention_pallas(*make_inputs(1, 3, 16, jnp.float32))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    np.testing.assert_array_equal(ragged_attention(*args, impl="auto"),
                                  ragged_attention_reference(*args))
    with pytest.raises(ValueError, match=error):
        ragged_attention(*args, impl="pallas")
    with pytest.raises(ValueError, match="mosaic backend lowers for tpu .*not for gpu"):
        ragged_attention_pallas(*make_inputs(1, 2, 16, jnp.float32), backend="mosaic")


def test_decoder_cached_steps_match_with_the_kernel():
    """Prefill left-padded, ragged prompts, then decode single tokens and a k+1 = 3 token
    verification step: the logits must not depend on the attention implementation."""
    cfg = preset("tiny", dtype="float32", param_dtype="float32")
    params = jax.tree.map(lambda x: 3.0 * x, init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    prompts_BL = jnp.asarray(rng.integers(1, cfg.vocab_size, (3, 7)), jnp.int32)
    cache = init_cache(cfg, 3, 40, starts_B=jnp.asarray([0, 3, 1]))
    _, cache = Decoder(cfg).apply({"params": params}, prompts_BL, cache=cache, prefill=True)
    cache = cache.replace(lengths_B=jnp.asarray([7, 5, 6], jnp.int32))  # right padding too

    @functools.partial(jax.jit, static_argnums=0)
    def step(impl, tokens_BT, cache):
        return Decoder(cfg, attention_impl=impl).apply({"params": params}, tokens_BT, cache=cache)

    caches = {"reference": cache, "pallas": cache}
    for tokens_BT in ([[3], [9], [27]], [[4], [1], [100]], [[5, 6, 7], [8, 9, 10], [11, 12, 13]]):
        logits = {}
        for impl in caches:
            logits[impl], caches[impl] = step(impl, jnp.asarray(tokens_BT, jnp.int32), caches[impl])
        np.testing.assert_allclose(logits["pallas"], logits["reference"], atol=1e-5, rtol=1e-5)
        # The scaled-up weights make the logits spread: the comparison is not of near-constants.
        assert np.std(np.asarray(logits["reference"])) > 1.0


EXPORT_SHAPES = (  # Qwen2.5-0.5B heads, k+1 = 9, S_max not a multiple of any block
    jax.ShapeDtypeStruct((4, 9, 14, 64), jnp.bfloat16),
    jax.ShapeDtypeStruct((4, 2, 1000, 64), jnp.bfloat16),
    jax.ShapeDtypeStruct((4, 2, 1000, 64), jnp.bfloat16),
    jax.ShapeDtypeStruct((4,), jnp.int32),
    jax.ShapeDtypeStruct((4,), jnp.int32),
)


def test_triton_kernel_lowers_for_cuda():
    h100 = AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="cuda")
    fn = jax.jit(functools.partial(ragged_attention_pallas, backend="triton"))
    with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), (AxisType.Explicit,),
                                                     abstract_device=h100)):
        exported = export.export(fn, platforms=("cuda",), disabled_checks=[
            export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*EXPORT_SHAPES)
    assert "__gpu$xla.gpu.triton" in exported.mlir_module()


def test_mosaic_kernel_lowers_for_tpu():
    fn = jax.jit(functools.partial(ragged_attention_pallas, backend="mosaic", block_s=256))
    exported = export.export(fn, platforms=("tpu",))(*EXPORT_SHAPES)
    assert "tpu_custom_call" in exported.mlir_module()
