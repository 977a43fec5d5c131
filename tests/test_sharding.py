"""A (2, 4) mesh of 8 fake CPU devices gives the same logits and tokens as one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl import sharding
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params, param_axes
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams

# 4 query heads and 4 KV heads so the tensor axis of 4 really splits attention.
CFG = preset("tiny", num_kv_heads=4, dtype="float32", param_dtype="float32")


@pytest.fixture(scope="module")
def setup():
    assert len(jax.devices()) == 8, "conftest.py should give 8 fake CPU devices"
    params = init_params(CFG, jax.random.key(0))
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    return params, mesh, sharding.shard_params(params, param_axes(CFG), mesh)


def test_params_are_split_by_their_logical_axes(setup):
    _, mesh, sharded = setup
    q = sharded["layers_0"]["attn"]["q_proj"]["kernel"]  # (embed, heads) -> (fsdp, tensor)
    assert q.sharding.spec == P("fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (CFG.hidden_size // 2, CFG.num_heads * CFG.head_dim // 4)
    down = sharded["layers_0"]["mlp"]["down_proj"]["kernel"]  # (mlp, embed)
    assert down.sharding.spec == P("tensor", "fsdp")


def test_indivisible_dims_are_replicated():
    mesh = sharding.make_mesh({"data": 2, "tensor": 4})
    spec = sharding.logical_to_spec(P("embed", "kv_heads"), (64, 2 * 16 - 2), mesh,
                                    sharding.DEFAULT_RULES)
    assert spec == P(None, None)  # fsdp has size 1; 30 does not split 4 ways
    assert sharding.logical_to_spec(P("batch", None), (8, 3), mesh, sharding.DEFAULT_RULES) == P("data", None)


def test_sharded_forward_matches_one_device(setup):
    params, mesh, sharded = setup
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, CFG.vocab_size)
    fwd = jax.jit(lambda p, t: Decoder(CFG).apply({"params": p}, t))
    want = fwd(params, tokens)
    got = fwd(sharded, sharding.shard_batch(tokens, mesh))
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_sharded_decode_matches_one_device(setup):
    params, mesh, sharded = setup
    b = 4
    prompts = jax.random.randint(jax.random.key(2), (b, 6), 3, CFG.vocab_size)
    lengths = jnp.array([6, 2, 4, 5])
    args = (prompts, lengths, jnp.arange(b), jax.random.key(3), SamplingParams.make(b, 1.0, top_p=0.9))
    want = generate(Decoder(CFG), params, *args, max_new_tokens=10)
    got = generate(Decoder(CFG), sharded, *sharding.shard_batch(args[:3], mesh), *args[3:],
                   max_new_tokens=10)
    np.testing.assert_array_equal(np.asarray(got.tokens_BN), np.asarray(want.tokens_BN))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(want.logprobs_BN), atol=1e-5)


def test_bad_mesh_and_batch_are_named():
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh({"data": 4, "tensor": 4})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 8})
    mesh = sharding.make_mesh({"data": -1})
    assert mesh.shape["data"] == 8
    with pytest.raises(ValueError, match="3 rows does not split over 8"):
        sharding.shard_batch(jnp.zeros((3, 2)), mesh)
