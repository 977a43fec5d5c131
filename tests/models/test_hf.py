"""hf.load / hf.save against transformers, on tiny random models built locally in float32."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jaxrl.models import hf
from jaxrl.models.config import ModelConfig, RopeScaling
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.kv_cache import init_cache

TOL = 1e-4
VOCAB = 256
_SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              # No eos, so HF generate never stops early.
              bos_token_id=None, eos_token_id=None, pad_token_id=None)
# Legacy rope kwargs (rope_theta, rope_scaling): transformers 4 and 5 both accept them, and 5
# writes them to config.json as `rope_parameters`. original_max_position_embeddings is small so
# that llama3 scaling changes the frequencies that positions < 64 use.
_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
FAMILIES = {
    "llama3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
               dict(rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE, rms_norm_eps=1e-5,
                    tie_word_embeddings=False)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              # With tied embeddings and small weights, greedy decoding repeats its last token.
              dict(rope_theta=1000000.0, tie_word_embeddings=True, initializer_range=0.3)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(head_dim=32, rope_theta=1000000.0, tie_word_embeddings=False)),
}


def _random_hf_model(family: str) -> transformers.PreTrainedModel:
    config_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**_SHAPE, **extra)).eval()
    # HF initialises norms to one and biases to zero; perturb them so that a swapped or
    # dropped norm/bias changes the logits.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    """(family, torch model, checkpoint dir, our model, our float32 params)."""
    torch_model = _random_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    torch_model.save_pretrained(path)
    model, params = hf.load(path, dtype="float32")
    return request.param, torch_model, path, model, params


def _torch_logits(torch_model, tokens_BT, mask_BT=None, positions_BT=None) -> np.ndarray:
    as_t = lambda x: None if x is None else torch.tensor(np.asarray(x))  # noqa: E731
    with torch.no_grad():
        out = torch_model(input_ids=as_t(tokens_BT), attention_mask=as_t(mask_BT),
                          position_ids=as_t(positions_BT))
    return out.logits.numpy()


def _logits(model: Decoder, params: dict, tokens_BT, mask_BT=None) -> np.ndarray:
    apply = jax.jit(lambda params, tokens_BT, mask_BT: model.apply(
        {"params": params}, tokens_BT, attention_mask_BT=mask_BT))
    return np.asarray(apply(params, tokens_BT, mask_BT))


def _tokens(shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, VOCAB, shape).astype(np.int32)


def test_load_builds_the_config_and_param_tree(checkpoint):
    family, torch_model, _, model, params = checkpoint
    hf_cfg = torch_model.config
    cfg = model.cfg
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
        hf_cfg.num_attention_heads, hf_cfg.num_key_value_heads, 32 if family == "qwen3" else 16)
    assert (cfg.qkv_bias, cfg.qk_norm) == (family == "qwen2", family == "qwen3")
    assert cfg.tie_word_embeddings == hf_cfg.tie_word_embeddings
    assert (cfg.rope_scaling is not None) == (family == "llama3")
    expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    assert all(x.shape == y.shape and x.dtype == jnp.float32
               for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(expected)))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logits_match_transformers(checkpoint, scan_layers):
    _, torch_model, _, model, params = checkpoint
    model = model.clone(scan_layers=scan_layers)
    tokens_BT = _tokens((2, 48))
    np.testing.assert_allclose(_logits(model, params, tokens_BT),
                               _torch_logits(torch_model, tokens_BT), rtol=0, atol=TOL)


@pytest.mark.parametrize("checkpoint", ["llama3"], indirect=True)
def test_llama3_rope_scaling_is_exercised(checkpoint):
    """Guards the test above: without llama3 scaling the Llama logits would differ."""
    _, torch_model, _, model, params = checkpoint
    tokens_BT = _tokens((1, 48))
    unscaled = Decoder(model.cfg.replace(rope_scaling=None))
    diff_BTV = _logits(unscaled, params, tokens_BT) - _torch_logits(torch_model, tokens_BT)
    assert np.abs(diff_BTV).max() > 10 * TOL


def test_left_padded_logits_match_transformers(checkpoint):
    _, torch_model, _, model, params = checkpoint
    pads_B = np.array([0, 5, 11])
    tokens_BT = _tokens((3, 24), seed=1)
    mask_BT = (np.arange(24)[None] >= pads_B[:, None]).astype(np.int32)
    tokens_BT = np.where(mask_BT, tokens_BT, 0)
    # HF's forward numbers positions 0..T-1 regardless of the mask; generate() and our
    # Decoder count only real tokens, so give HF those positions explicitly.
    positions_BT = np.maximum(np.cumsum(mask_BT, axis=1) - 1, 0)
    ours_BTV = _logits(model, params, tokens_BT, mask_BT)
    theirs_BTV = _torch_logits(torch_model, tokens_BT, mask_BT, positions_BT)
    valid = mask_BT.astype(bool)
    np.testing.assert_allclose(ours_BTV[valid], theirs_BTV[valid], rtol=0, atol=TOL)


def _greedy(model, params, prompt_BT, starts_B, steps) -> np.ndarray:
    """Greedy decoding with the KV cache: one prefill, then one token per step."""
    b, t = prompt_BT.shape
    cache = init_cache(model.cfg, b, t + steps, starts_B=jnp.asarray(starts_B),
                       stacked=model.scan_layers)
    apply = jax.jit(lambda params, tokens_BT, cache, prefill: model.apply(
        {"params": params}, tokens_BT, cache=cache, prefill=prefill), static_argnums=3)
    logits_BTV, cache = apply(params, jnp.asarray(prompt_BT), cache, True)
    out_B = [jnp.argmax(logits_BTV[:, -1], axis=-1)]
    for _ in range(steps - 1):
        logits_BTV, cache = apply(params, out_B[-1][:, None], cache, False)
        out_B.append(jnp.argmax(logits_BTV[:, -1], axis=-1))
    return np.stack(out_B, axis=1)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_greedy_generation_matches_transformers(checkpoint, scan_layers):
    """The KV cache's path, with the layers unrolled and scanned (the cache in the scan's
    carry, each layer's slice written at a traced index)."""
    _, torch_model, _, model, params = checkpoint
    model = model.clone(scan_layers=scan_layers)
    steps = 32
    starts_B = np.array([0, 4])  # row 1 is left-padded
    prompt_BT = _tokens((2, 12), seed=2)
    mask_BT = (np.arange(12)[None] >= starts_B[:, None]).astype(np.int32)
    prompt_BT = np.where(mask_BT, prompt_BT, 0)
    with torch.no_grad():
        theirs = torch_model.generate(
            input_ids=torch.tensor(prompt_BT), attention_mask=torch.tensor(mask_BT),
            do_sample=False, max_new_tokens=steps, pad_token_id=0).numpy()[:, 12:]
    ours = _greedy(model, params, prompt_BT, starts_B, steps)
    assert theirs.shape == (2, steps)
    # A row stuck repeating one token would say little about positions or the cache.
    assert all(len(set(row)) >= 8 for row in theirs)
    np.testing.assert_array_equal(ours, theirs)


ROUND_TRIP_CONFIGS = {
    "llama3": ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=500000.0,
                          rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16), rms_norm_eps=1e-5,
                          max_position_embeddings=512, dtype="float32", param_dtype="float32"),
    "qwen2": ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1e6, qkv_bias=True,
                         tie_word_embeddings=True, dtype="float32", param_dtype="float32"),
    "qwen3": ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=1e6, qk_norm=True,
                         dtype="float32", param_dtype="float32"),
}


def _random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random params in init_params' tree; norms and biases off their constant init, so that a
    swapped or dropped one changes the logits. (numpy: running init_params costs seconds.)"""
    rng = np.random.RandomState(seed)

    def fill(path, x):
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(mean + 0.1 * rng.randn(*x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(
        fill, jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))


def _from_pretrained(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("family", sorted(ROUND_TRIP_CONFIGS))
def test_save_loads_in_transformers_with_same_logits(family, tmp_path):
    cfg = ROUND_TRIP_CONFIGS[family]
    params = _random_params(cfg)
    hf.save(tmp_path, cfg, params, eos_ids=(3, 7), bos_id=1)
    torch_model = _from_pretrained(tmp_path)
    assert type(torch_model).__name__ == {"llama3": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                          "qwen3": "Qwen3ForCausalLM"}[family]
    assert torch_model.generation_config.eos_token_id == [3, 7]
    tokens_BT = _tokens((2, 40), seed=3)
    np.testing.assert_allclose(_logits(Decoder(cfg), params, tokens_BT),
                               _torch_logits(torch_model, tokens_BT), rtol=0, atol=TOL)
    assert hf.config_from_hf(json.loads((tmp_path / "config.json").read_text()), "float32") == cfg


def test_sharded_save_and_load(tmp_path):
    cfg = ROUND_TRIP_CONFIGS["llama3"]
    params = _random_params(cfg)
    hf.save(tmp_path / "ours", cfg, params, max_shard_bytes=64 * 1024)
    shards = sorted(p.name for p in (tmp_path / "ours").glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "ours" / hf.INDEX_FILE).read_text())
    assert len(shards) > 1 and not (tmp_path / "ours" / hf.WEIGHTS_FILE).exists()
    assert sorted(set(index["weight_map"].values())) == shards
    tokens_BT = _tokens((1, 16), seed=4)
    np.testing.assert_allclose(_logits(Decoder(cfg), params, tokens_BT),
                               _torch_logits(_from_pretrained(tmp_path / "ours"), tokens_BT),
                               rtol=0, atol=TOL)
    _, reloaded = hf.load(tmp_path / "ours", dtype="float32")
    jax.tree.map(np.testing.assert_array_equal, reloaded, params)
    # A checkpoint that transformers shards itself reads back to the same params.
    _from_pretrained(tmp_path / "ours").save_pretrained(tmp_path / "theirs", max_shard_size="64KB")
    assert (tmp_path / "theirs" / hf.INDEX_FILE).exists()
    _, theirs = hf.load(tmp_path / "theirs", dtype="float32")
    jax.tree.map(np.testing.assert_array_equal, theirs, params)


def test_bf16_checkpoint_loads_exactly_and_saves_in_bf16(tmp_path):
    torch_model = _random_hf_model("qwen2").to(torch.bfloat16)
    torch_model.save_pretrained(tmp_path / "hf")
    model, params = hf.load(tmp_path / "hf", dtype="bfloat16")
    assert model.cfg.param_dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    embed = torch_model.model.embed_tokens.weight.detach().float().numpy()
    q_kernel = torch_model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy().T
    np.testing.assert_array_equal(np.asarray(params["embedding"], np.float32), embed)
    np.testing.assert_array_equal(
        np.asarray(params["layers_1"]["attn"]["q_proj"]["kernel"], np.float32), q_kernel)
    hf.save(tmp_path / "ours", model.cfg, params)
    saved = load_file(tmp_path / "ours" / hf.WEIGHTS_FILE)
    assert saved["model.embed_tokens.weight"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        saved["model.layers.1.self_attn.q_proj.weight"].astype(np.float32), q_kernel.T)


def test_dtype_objects_and_the_model_itself_are_accepted(tmp_path):
    """hf.load(path, dtype=jnp.float32) and hf.save(path, model, params) as users write
    them: the same files and params as the string / ModelConfig forms."""
    _random_hf_model("qwen2").save_pretrained(tmp_path / "hf")
    by_name = hf.load(tmp_path / "hf", dtype="float32")
    for dtype in (jnp.float32, np.float32, jnp.dtype("float32")):
        model, params = hf.load(tmp_path / "hf", dtype=dtype)
        assert model.cfg == by_name[0].cfg
        jax.tree.map(np.testing.assert_array_equal, params, by_name[1])
    with pytest.raises(ValueError, match="dtype='floaty' is not a dtype"):
        hf.load(tmp_path / "hf", dtype="floaty")
    hf.save(tmp_path / "by_model", model, params)
    hf.save(tmp_path / "by_cfg", model.cfg, params)
    for name in (hf.WEIGHTS_FILE, hf.CONFIG_FILE):
        assert (tmp_path / "by_model" / name).read_bytes() == (tmp_path / "by_cfg" / name).read_bytes()


@pytest.mark.parametrize("checkpoint", ["qwen3"], indirect=True)
def test_load_does_not_import_torch(checkpoint):
    """The GPU benchmark images have no torch; loading must not need it."""
    path = checkpoint[2]
    code = ("import sys; from jaxrl.models import hf; hf.load(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]


def _edit_tensors(path, edit) -> None:
    tensors = load_file(path / hf.WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, path / hf.WEIGHTS_FILE, metadata={"format": "pt"})


def test_missing_unexpected_and_tied_lm_head_tensors(tmp_path):
    cfg = ROUND_TRIP_CONFIGS["qwen2"]  # tied embeddings
    hf.save(tmp_path, cfg, _random_params(cfg))
    # A tied checkpoint may carry lm_head.weight; it is ignored, not an error.
    _edit_tensors(tmp_path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    hf.load(tmp_path, dtype="float32")
    _edit_tensors(tmp_path, lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected tensors \[model\.extra\.weight\]"):
        hf.load(tmp_path)
    _edit_tensors(tmp_path, lambda t: [t.pop("model.extra.weight"),
                                       t.pop("model.layers.1.self_attn.k_proj.bias")])
    with pytest.raises(ValueError, match=r"missing tensors \[model\.layers\.1\.self_attn\.k_proj"):
        hf.load(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    cfg = ROUND_TRIP_CONFIGS["qwen3"]
    hf.save(tmp_path, cfg, _random_params(cfg))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.gate_proj\.weight in model\.safetensors "
                                         r"has shape \(128, 64\); config\.json implies \(96, 64\)"):
        hf.load(tmp_path)


# config.json as transformers 4 wrote it for Llama-3.2-1B (rope type under the old `type` key
# here), and as transformers 5 writes it.
_LLAMA_V4 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
             "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
             "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
             "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
             "attention_bias": False, "mlp_bias": False, "rope_theta": 500000.0,
             "rope_scaling": {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
_LLAMA_V5 = {**{k: v for k, v in _LLAMA_V4.items() if k not in ("rope_theta", "rope_scaling")},
             "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}}


@pytest.mark.parametrize("hf_config", [_LLAMA_V4, _LLAMA_V5], ids=["layout4", "layout5"])
def test_config_layouts_map_to_the_llama3_preset(hf_config):
    from jaxrl.models.config import preset
    assert hf.config_from_hf(hf_config) == preset("llama3_1b")


def test_family_defaults_follow_transformers():
    """Keys omitted from config.json take the values the transformers config classes assume."""
    base = {k: v for k, v in _LLAMA_V5.items() if k not in ("num_key_value_heads", "architectures")}
    base["num_attention_heads"] = 64  # so that no default coincides with the other family's
    qwen3 = hf.config_from_hf({**base, "model_type": "qwen3", "rope_parameters": None})
    assert (qwen3.head_dim, qwen3.num_kv_heads, qwen3.qk_norm) == (128, 32, True)
    assert qwen3.rope_theta == 10000.0 and qwen3.rope_scaling is None
    llama = hf.config_from_hf({**base, "model_type": "llama"})
    assert (llama.head_dim, llama.num_kv_heads) == (2048 // 64, 64)


def test_unknown_architecture_is_rejected():
    with pytest.raises(ValueError, match="MistralForCausalLM.*supported.*LlamaForCausalLM"):
        hf.config_from_hf({**_LLAMA_V5, "architectures": ["MistralForCausalLM"]})


@pytest.mark.parametrize("arch, change, name", [
    ("LlamaForCausalLM", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("LlamaForCausalLM", {"attention_bias": True}, "attention_bias"),
    ("LlamaForCausalLM", {"mlp_bias": True}, "mlp_bias"),
    ("Qwen3ForCausalLM", {"attention_bias": True}, "attention_bias"),
    ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ("LlamaForCausalLM", {"rope_parameters": {"rope_type": "default",
                                              "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ("Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": 64,
                          "max_window_layers": 8}, "sliding_attention"),
    ("Qwen2ForCausalLM", {"layer_types": ["full_attention"] * 15 + ["sliding_attention"]},
     "sliding_attention"),
    ("LlamaForCausalLM", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
])
def test_unsupported_fields_are_rejected(arch, change, name):
    with pytest.raises(ValueError, match=f"{name}.*supported"):
        hf.config_from_hf({**_LLAMA_V5, "architectures": [arch], **change})


def test_sliding_window_field_alone_is_accepted():
    """Qwen2.5 configs set sliding_window but keep use_sliding_window false: full attention."""
    cfg = hf.config_from_hf({**_LLAMA_V5, "architectures": ["Qwen2ForCausalLM"],
                             "use_sliding_window": False, "sliding_window": 32768,
                             "max_window_layers": 8})
    assert cfg.qkv_bias


def test_missing_config_or_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=f"no config.json in {tmp_path / 'gone'} .the directory does not"):
        hf.load(tmp_path / "gone")
    cfg = ROUND_TRIP_CONFIGS["qwen2"]
    hf.save(tmp_path, cfg, _random_params(cfg))
    (tmp_path / hf.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds neither model.safetensors"):
        hf.load(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"no config.json in {tmp_path}: a HF checkpoint"):
        hf.load(tmp_path)
