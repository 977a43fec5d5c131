"""The speculative-sampling kernels, Triton and Mosaic (interpret mode), against
`speculative_sample_reference`, which is `kernels.sampling.sample_reference` per position;
the noise bound; the `impl` switch; their CUDA and TPU lowering."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

from kernels.sampling import gumbel_from_index, position_hash
from kernels.speculative_sampling import (BACKENDS, speculative_sample,
                                          speculative_sample_pallas,
                                          speculative_sample_reference)
from kernels.speculative_sampling.common import gumbel_upper_bound

# Five rows that mix every setting: greedy, temperatures 0.7 and 1, top-k 5, top-p 0.8.
TEMPERATURE = np.array([0.0, 0.7, 1.0, 1.0, 0.7], np.float32)
TOP_K = np.array([5, 0, 0, 5, 5], np.int32)
TOP_P = np.array([1.0, 1.0, 1.0, 0.8, 0.8], np.float32)


def make_logits(b, k, v, dtype, seed, ties=False):
    z = 3.0 * jax.random.normal(jax.random.key(seed), (b, k, v))
    # Integer logits: many exact ties, also at the k-th largest value and in the argmax.
    return (jnp.round(z) if ties else z).astype(dtype)


def make_keys(b, k, seed):
    return jax.random.bits(jax.random.key(seed + 1), (b, k, 2), jnp.uint32)


def settings(b):
    return jnp.asarray(TEMPERATURE[:b]), jnp.asarray(TOP_K[:b]), jnp.asarray(TOP_P[:b])


def drafts_from(tokens_BK):
    """Drafts that accept all (row 0), a prefix (1, 4), none (2), and a row with no drafts
    (3); the reference's tokens make them."""
    tokens = np.asarray(tokens_BK)
    b, k = tokens.shape
    d = k - 1
    drafts = tokens[:, :d].copy()
    num = np.full((b,), d, np.int32)
    if d:
        drafts[1:2, min(1, d - 1)] += 1
        drafts[2:3, 0] += 1
        num[3:4] = 0
        drafts[3:4] = -1
        num[4:5] = min(2, d)
    return jnp.asarray(drafts, jnp.int32), jnp.asarray(num)


@functools.cache
def pallas(backend="triton", num_splits=None, block_v=256):
    """block_v=256 tiles a 1000-entry vocabulary in 4 blocks, the last one partial."""
    return jax.jit(functools.partial(speculative_sample_pallas, interpret=True, backend=backend,
                                     block_v=block_v, num_splits=num_splits))


def assert_matches(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[3], want[3], atol=1e-5, rtol=0)


# Mosaic (8 float32 / 16 bfloat16 rows a block): 20 rows make a partial last row block, and
# 1000 a partial last vocabulary block; 5 and 4 rows are one whole block; "b1-bf16" is all
# greedy, so no block samples.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b,k,v,dtype,num_splits,ties", [
    (5, 4, 1000, jnp.float32, None, False),  # ragged vocabulary, one tile per split
    (5, 4, 1000, jnp.bfloat16, 1, True),     # all tiles in one program: the noise bound skips
    (5, 1, 64, jnp.float32, 1, True),        # vocabulary smaller than a tile
    (1, 4, 1000, jnp.bfloat16, 2, False),
], ids=["f32-split", "bf16-ties-1split", "v64-k1-ties", "b1-bf16"])
def test_kernel_matches_reference(backend, b, k, v, dtype, num_splits, ties):
    logits, keys = make_logits(b, k, v, dtype, seed=v + b, ties=ties), make_keys(b, k, v)
    temperature, top_k, top_p = settings(b)
    tokens = jax.jit(speculative_sample_reference)(logits, jnp.zeros((b, k - 1), jnp.int32),
                                       jnp.zeros((b,), jnp.int32), temperature, top_k, top_p,
                                       keys)[0]
    drafts, num_drafts = drafts_from(tokens)
    args = (logits, drafts, num_drafts, temperature, top_k, top_p, keys)
    want = jax.jit(speculative_sample_reference)(*args)
    got = pallas(backend, num_splits if backend == "triton" else None)(*args)
    assert_matches(got, want)
    if b == 5 and k == 4:  # the drafts exercise every acceptance case
        np.testing.assert_array_equal(want[1], [3, 1, 0, 0, 2])


def test_a_perturbed_draft_changes_acceptance():
    b, k, v = 5, 4, 1000
    logits, keys = make_logits(b, k, v, jnp.float32, seed=3), make_keys(b, k, 3)
    temperature, top_k, top_p = settings(b)
    tokens = jax.jit(speculative_sample_reference)(logits, jnp.zeros((b, k - 1), jnp.int32),
                                       jnp.zeros((b,), jnp.int32), temperature, top_k, top_p,
                                       keys)[0]
    drafts = jnp.asarray(tokens[:, :k - 1])
    num = jnp.full((b,), k - 1, jnp.int32)
    run = pallas("triton", 1)
    all_accepted = run(logits, drafts, num, temperature, top_k, top_p, keys)[1]
    np.testing.assert_array_equal(all_accepted, [k - 1] * b)
    wrong_second = run(logits, drafts.at[:, 1].add(1), num, temperature, top_k, top_p, keys)[1]
    np.testing.assert_array_equal(wrong_second, [1] * b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_p_and_top_k_edges(backend):
    """top_p near 0 keeps one token, top_k >= V is off, top_k 1 is greedy on the scaled logits,
    top_p 0.95 keeps many; on tied logits, so the k-th value has ties."""
    b, k, v = 5, 2, 1000
    logits, keys = make_logits(b, k, v, jnp.float32, seed=11, ties=True), make_keys(b, k, 11)
    temperature = jnp.asarray([1.0, 0.5, 1.0, 2.0, 1.0], jnp.float32)
    top_k = jnp.asarray([0, 5000, 1, 0, 40], jnp.int32)
    top_p = jnp.asarray([1e-6, 0.95, 1.0, 0.95, 0.5], jnp.float32)
    args = (logits, jnp.zeros((b, k - 1), jnp.int32), jnp.zeros((b,), jnp.int32), temperature,
            top_k, top_p, keys)
    assert_matches(pallas(backend, 1 if backend == "triton" else None)(*args),
                   jax.jit(speculative_sample_reference)(*args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_noise_token_is_matched(backend):
    """This key gives index 5 a top hash value, so the largest noise the rule makes
    (-log(-log(1 - 2**-24)), about 16.6, finite): the kernel's noise bound must let it through.
    (Temperature 1 and no top-k/top-p: Mosaic's block that samples without processing.)"""
    v = 64
    logits = make_logits(1, 1, v, jnp.float32, seed=5)
    keys = jnp.asarray([[[0, 0x595A3E6]]], jnp.uint32)
    noise = gumbel_from_index(jnp.uint32(5), keys[0, 0, 0], keys[0, 0, 1])
    assert 16.0 < float(noise) < 17.0
    args = (logits, jnp.zeros((1, 0), jnp.int32), jnp.zeros((1,), jnp.int32),
            jnp.ones((1,), jnp.float32), jnp.zeros((1,), jnp.int32), jnp.ones((1,), jnp.float32),
            keys)
    assert_matches(pallas(backend, 1 if backend == "triton" else None)(*args),
                   jax.jit(speculative_sample_reference)(*args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_ties_take_the_lowest_index_across_splits(backend):
    """Ties within and across the tiles of 256 (Triton: one split each; Mosaic: blocks)."""
    v = 1000
    logits = jnp.zeros((2, 1, v), jnp.float32).at[:, 0, [100, 130, 300, 310, 700]].set(4.0)
    logits = logits.at[1, 0, [100, 130]].set(0.0)  # row 1: the first max is in the second tile
    args = (logits, jnp.zeros((2, 0), jnp.int32), jnp.zeros((2,), jnp.int32),
            jnp.zeros((2,), jnp.float32), jnp.zeros((2,), jnp.int32), jnp.ones((2,), jnp.float32),
            make_keys(2, 1, 0))
    got = pallas(backend, 4 if backend == "triton" else None)(*args)
    np.testing.assert_array_equal(got[0][:, 0], [100, 300])
    assert_matches(got, jax.jit(speculative_sample_reference)(*args))


def test_noise_bound_holds_and_is_tight():
    index = jnp.arange(1 << 22, dtype=jnp.uint32)
    key0, key1 = jnp.uint32(0x1234567), jnp.uint32(0x89ABCDE)
    noise = gumbel_from_index(index, key0, key1)
    bound = gumbel_upper_bound(position_hash(index, key0, key1))
    assert bool(jnp.all(bound >= noise))
    # Tight where it matters: large noise (u near 1), which is what can win.
    large = noise > 5.0
    assert float(jnp.max(jnp.where(large, bound - noise, 0.0))) < 0.07


def small_args(dtype=jnp.float32, v=64):
    b, k = 5, 2
    logits, keys = make_logits(b, k, v, dtype, seed=2), make_keys(b, k, 2)
    return (logits, jnp.zeros((b, k - 1), jnp.int32), jnp.ones((b,), jnp.int32),
            *settings(b), keys)


def test_impl_switch():
    args = small_args()
    want = speculative_sample_reference(*args)
    assert_matches(speculative_sample(*args, impl="auto"), want)  # CPU: the reference
    assert_matches(speculative_sample(*args, impl="pallas"), want)  # CPU: interpret mode
    with pytest.raises(ValueError, match="valid: .*auto.*pallas.*reference"):
        speculative_sample(*args, impl="triton")
    for kwargs, error in [({"backend": "cuda"}, "valid: .*triton.*mosaic"),
                          ({"backend": "mosaic", "block_v": 200}, "multiple of 128"),
                          ({"backend": "mosaic", "num_splits": 2}, "only the Triton kernel"),
                          ({"backend": "triton", "block_v": 384}, "power of two")]:
        with pytest.raises(ValueError, match=error):
            speculative_sample_pallas(*args, **kwargs)


@pytest.mark.parametrize("backend,dtype,takes", [
    ("triton", jnp.int32, "float32, bfloat16, float16"),
    ("mosaic", jnp.float16, "float32, bfloat16"),
])
def test_pallas_raises_for_logits_the_kernels_do_not_take(backend, dtype, takes):
    """Never the reference's result in the kernel's name: a ValueError with the dtype and
    what the backend takes, from the kernel and from impl="pallas" (on CPU: Triton)."""
    args = small_args(dtype)
    error = f"logits of dtype {jnp.dtype(dtype).name}: the {backend} kernels take {takes}$"
    with pytest.raises(ValueError, match=error):
        speculative_sample_pallas(*args, backend=backend)
    if backend == "triton":
        with pytest.raises(ValueError, match=error):
            speculative_sample(*args, impl="pallas")
    with pytest.raises(ValueError, match="empty vocabulary"):
        speculative_sample_pallas(*small_args(v=0), backend=backend)


def test_on_gpu_auto_takes_the_reference_only_where_the_kernel_does_not_apply(monkeypatch):
    """On a GPU, "auto" runs the reference for logits no kernel takes, where "pallas" raises;
    and the Mosaic kernels raise on a GPU. The platform is faked: nothing here lowers."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    int_args = small_args(jnp.int32)
    assert_matches(speculative_sample(*int_args, impl="auto"),
                   speculative_sample_reference(*int_args))
    with pytest.raises(ValueError, match="dtype int32: the triton kernels take"):
        speculative_sample(*int_args, impl="pallas")
    with pytest.raises(ValueError, match="mosaic backend lowers for tpu .*not for gpu"):
        speculative_sample_pallas(*small_args(), backend="mosaic")


def export_shapes(dtype, b=4, k=5, v=151936):
    """Qwen2.5's vocabulary: not a multiple of Mosaic's 8192 block, so its last block is partial."""
    return (jax.ShapeDtypeStruct((b, k, v), dtype),
            jax.ShapeDtypeStruct((b, k - 1), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32),
            jax.ShapeDtypeStruct((b,), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32),
            jax.ShapeDtypeStruct((b,), jnp.float32), jax.ShapeDtypeStruct((b, k, 2), jnp.uint32))


def test_triton_kernel_lowers_for_cuda():
    shapes = export_shapes(jnp.bfloat16)
    h100 = AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="cuda")
    with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), (AxisType.Explicit,),
                                                     abstract_device=h100)):
        exported = export.export(jax.jit(speculative_sample_pallas), platforms=("cuda",), disabled_checks=[
            export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*shapes)
    module = exported.mlir_module()
    # The sampling pass and the two counting passes (with and without mass).
    for name in ("speculative_sample_pass", "speculative_count_pass"):
        assert name in module


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_mosaic_kernel_lowers_for_tpu(dtype):
    """Pallas's Mosaic lowering of both kernels (20 rows: 2 bfloat16 / 3 float32 row blocks,
    the last partial). Mosaic's own compiler runs only on a TPU host, so this is not that."""
    fn = jax.jit(functools.partial(speculative_sample_pallas, backend="mosaic"))
    module = export.export(fn, platforms=("tpu",))(*export_shapes(dtype)).mlir_module()
    # The sampling pass and three counting passes (top-k; top-p's total and its bisection).
    assert module.count("tpu_custom_call") == 4
    for name in ("speculative_sample_pass", "speculative_count_pass"):
        assert f'kernel_name = "{name}"' in module
