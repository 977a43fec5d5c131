"""A (2, 4) mesh of 8 fake CPU devices gives the same logits and tokens as one device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import config_dict
from jaxrl import sharding
from jaxrl.config_utils import build
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params, param_axes
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams

# 4 query heads and 4 KV heads so the tensor axis of 4 really splits attention.
CFG = preset("tiny", num_kv_heads=4, dtype="float32", param_dtype="float32")
RULES = build(sharding.ShardingConfig, config_dict().sharding, "config.sharding").table


def layout(**mesh) -> sharding.Layout:
    return sharding.Layout(sharding.make_mesh(mesh), RULES)


@pytest.fixture(scope="module")
def setup():
    assert len(jax.devices()) == 8, "conftest.py should give 8 fake CPU devices"
    params = init_params(CFG, jax.random.key(0))
    lay = layout(fsdp=2, tensor=4)
    return params, lay, sharding.shard_params(params, param_axes(CFG), lay)


def test_params_are_split_by_their_logical_axes(setup):
    _, lay, sharded = setup
    q = sharded["layers_0"]["attn"]["q_proj"]["kernel"]  # (embed, heads) -> (fsdp, tensor)
    assert q.sharding.spec == P("fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (CFG.hidden_size // 2, CFG.num_heads * CFG.head_dim // 4)
    down = sharded["layers_0"]["mlp"]["down_proj"]["kernel"]  # (mlp, embed)
    assert down.sharding.spec == P("tensor", "fsdp")


def test_indivisible_dims_are_replicated():
    mesh = sharding.make_mesh({"data": 2, "tensor": 4})
    spec = sharding.logical_to_spec(P("embed", "kv_heads"), (64, 2 * 16 - 2), mesh, RULES)
    assert spec == P(None, None)  # fsdp has size 1; 30 does not split 4 ways
    assert sharding.logical_to_spec(P("batch", None), (8, 3), mesh, RULES) == P("data", None)


def test_sharded_forward_matches_one_device(setup):
    params, lay, sharded = setup
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, CFG.vocab_size)
    fwd = jax.jit(lambda p, t: Decoder(CFG).apply({"params": p}, t))
    want = fwd(params, tokens)
    got = fwd(sharded, sharding.shard_batch(tokens, lay))
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_sharded_decode_matches_one_device(setup):
    params, lay, sharded = setup
    b = 4
    prompts = jax.random.randint(jax.random.key(2), (b, 6), 3, CFG.vocab_size)
    lengths = jnp.array([6, 2, 4, 5])
    args = (prompts, lengths, jnp.arange(b), jax.random.key(3), SamplingParams.make(b, 1.0, top_p=0.9))
    want = generate(Decoder(CFG), params, *args, max_new_tokens=10)
    got = generate(Decoder(CFG), sharded, *sharding.shard_batch(args[:3], lay), *args[3:],
                   max_new_tokens=10)
    np.testing.assert_array_equal(np.asarray(got.tokens_BN), np.asarray(want.tokens_BN))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(want.logprobs_BN), atol=1e-5)


def test_bad_mesh_and_batch_are_named():
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh({"data": 4, "tensor": 4})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 8})
    lay = layout(data=-1)
    assert lay.mesh.shape["data"] == 8
    with pytest.raises(ValueError, match=r"config.sft.batch_size = 3 rows does not split over "
                                         r"the batch axes \('data',\) .* \(8 ways\)"):
        lay.check_rows(3, "config.sft.batch_size")


def test_rules_come_from_the_config_and_bad_ones_are_named():
    c = config_dict()
    assert dict(RULES)["batch"] == ("data", "fsdp") and dict(RULES)["head_dim"] == ()
    c.sharding.rules.embed = ("fsdp", "model")
    with pytest.raises(ValueError, match=r"config.sharding.rules.embed=\('fsdp', 'model'\): "
                                         r"mesh axes must be distinct names from"):
        build(sharding.ShardingConfig, c.sharding, "config.sharding")
    c = config_dict()
    c.sharding.rules.experts = ("tensor",)
    with pytest.raises(ValueError, match="config.sharding.rules has no field experts"):
        build(sharding.ShardingConfig, c.sharding, "config.sharding")
    with pytest.raises(ValueError, match="set all of coordinator_address"):
        sharding.DistributedConfig("10.0.0.1:1234", -1, -1)


def test_rules_flags_round_trip_and_fail_before_compiling(tmp_path):
    """`--config.sharding.rules.X=...` through absl flags and the typed config: a plain name
    becomes a one-axis tuple; a bad axis, an unknown logical name, a mesh the devices do not
    fill, and a batch that does not split each fail naming the value, before any compile."""
    import subprocess
    import sys

    def main(*flags):
        return subprocess.run(
            [sys.executable, "-m", "jaxrl.main", "--config=configs/grpo.py:model=tiny",
             f"--workdir={tmp_path}", *flags], capture_output=True, text=True, timeout=120,
            env={**__import__("os").environ, "JAX_PLATFORMS": "cpu",
                 "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})

    bad_axis = main("--config.sharding.rules.embed=model")
    assert "config.sharding.rules.embed=('model',)" in bad_axis.stderr
    unknown = main("--config.sharding.rules.experts=tensor")
    assert "config.sharding.rules.experts does not exist" in unknown.stderr
    mesh = main("--config.mesh.data=3")
    assert "config.mesh {'data': 3, 'fsdp': 1, 'tensor': 1} needs 3 devices; there are 8" in mesh.stderr
    batch = main("--config.mesh.data=8", "--config.sft.batch_size=12")
    assert "config.sft.batch_size = 12 rows does not split over the batch axes" in batch.stderr
    assert not any(p.returncode == 0 for p in (bad_axis, unknown, mesh, batch))
