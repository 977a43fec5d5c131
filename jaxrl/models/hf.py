"""Hugging Face checkpoints <-> `Decoder` params: config mapping, safetensors load and save.

    model, params = hf.load("/ckpt/Qwen2.5-0.5B-Instruct", dtype="bfloat16")  # or jnp.bfloat16
    logits_BTV = model.apply({"params": params}, tokens_BT)   # model.cfg is the ModelConfig
    hf.save("/out", model, params, eos_ids=(151645,))  # or model.cfg; transformers loads it
    hf.export("/out", model, params, src="/ckpt/...", eos_ids=tok.eos_ids)  # + tokenizer files

Supported: LlamaForCausalLM (with or without llama3 RoPE scaling), Qwen2ForCausalLM,
Qwen3ForCausalLM. A config.json field that changes the math in a way the Decoder does not
implement raises ValueError instead of being ignored, so a checkpoint either loads exactly or
not at all. Neither direction imports torch or transformers.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxrl.models.config import ModelConfig, RopeScaling
from jaxrl.models.decoder import Decoder, init_params

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # "5GB", the shard size of most Hub checkpoints
# Copied from the source checkpoint by `export`, where present: what a server needs besides
# the weights (generation_config.json keeps the checkpoint's sampling defaults and eos ids).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
              "generation_config.json")


@dataclasses.dataclass(frozen=True)
class _Family:
    model_type: str
    qkv_bias: bool
    qk_norm: bool
    # config.json flags that must be false: each adds biases the Decoder does not have.
    bias_flags: tuple[str, ...]
    # What transformers assumes when config.json omits the key (its config-class defaults);
    # None means hidden_size // num_attention_heads and num_attention_heads respectively.
    default_head_dim: int | None
    default_kv_heads: int | None
    default_max_positions: int


_FAMILIES = {
    "LlamaForCausalLM": _Family("llama", qkv_bias=False, qk_norm=False,
                                bias_flags=("attention_bias", "mlp_bias"), default_head_dim=None,
                                default_kv_heads=None, default_max_positions=2048),
    # Qwen2 always has q/k/v biases and never an o_proj bias, whatever config.json says.
    "Qwen2ForCausalLM": _Family("qwen2", qkv_bias=True, qk_norm=False, bias_flags=(),
                                default_head_dim=None, default_kv_heads=32,
                                default_max_positions=32768),
    # Qwen3's attention_bias would also bias o_proj.
    "Qwen3ForCausalLM": _Family("qwen3", qkv_bias=False, qk_norm=True,
                                bias_flags=("attention_bias",), default_head_dim=128,
                                default_kv_heads=32, default_max_positions=32768),
}
_ARCH_BY_MODEL_TYPE = {f.model_type: arch for arch, f in _FAMILIES.items()}
_ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor")


def _architecture(hf_config: dict) -> str:
    archs = hf_config.get("architectures")
    if archs:
        if len(archs) != 1 or archs[0] not in _FAMILIES:
            raise ValueError(f"config.json architectures={archs}; supported: {sorted(_FAMILIES)}")
        return archs[0]
    model_type = hf_config.get("model_type")
    if model_type not in _ARCH_BY_MODEL_TYPE:
        raise ValueError(f"config.json has no architectures and model_type={model_type!r}; "
                         f"supported: {sorted(_ARCH_BY_MODEL_TYPE)}")
    return _ARCH_BY_MODEL_TYPE[model_type]


def _require(hf_config: dict, key: str):
    if key not in hf_config:
        raise ValueError(f"config.json lacks required field {key!r}")
    return hf_config[key]


def _rope(hf_config: dict, max_positions: int) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) from either layout.

    transformers 4 writes top-level `rope_theta` and `rope_scaling` (type under `rope_type`, or
    `type` in older files); transformers 5 writes `rope_parameters` with `rope_theta` inside.
    Precedence follows transformers 5: a non-null `rope_scaling` wins over `rope_parameters`.
    """
    params = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"per-layer-type rope parameters {params} are not supported; "
                         "supported: one rope_parameters dict for all layers")
    theta = float(params.get("rope_theta", hf_config.get("rope_theta", 10000.0)))
    partial = params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor={partial} is not supported; supported: 1.0")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"rope_type={rope_type!r} is not supported; "
                         f"supported: {list(_ROPE_TYPES)}")
    if rope_type == "default":
        return theta, None
    missing = [k for k in _LLAMA3_KEYS if k not in params]
    if missing:
        raise ValueError(f"rope_type='llama3' parameters {params} lack {missing}")
    # transformers 5 falls back to max_position_embeddings when this key is absent.
    original = params.get("original_max_position_embeddings", max_positions)
    return theta, RopeScaling(factor=float(params["factor"]),
                              low_freq_factor=float(params["low_freq_factor"]),
                              high_freq_factor=float(params["high_freq_factor"]),
                              original_max_position_embeddings=int(original))


def _check_full_attention(hf_config: dict, num_layers: int) -> None:
    """Rejects sliding-window layers, which transformers derives as Qwen2/3 configs do."""
    layer_types = hf_config.get("layer_types")
    if layer_types is None and hf_config.get("use_sliding_window", False):
        first_sliding = hf_config.get("max_window_layers", 28)
        layer_types = ["sliding_attention" if i >= first_sliding else "full_attention"
                       for i in range(num_layers)]
    other = sorted({t for t in layer_types or () if t != "full_attention"})
    if other:
        raise ValueError(f"layer_types {other} (use_sliding_window="
                         f"{hf_config.get('use_sliding_window')}, sliding_window="
                         f"{hf_config.get('sliding_window')}) are not supported; "
                         "supported: full_attention in every layer")


def config_from_hf(hf_config: dict, dtype: str = "bfloat16") -> ModelConfig:
    """The ModelConfig for a parsed config.json; params and activations in `dtype`."""
    family = _FAMILIES[_architecture(hf_config)]
    if "quantization_config" in hf_config:
        raise ValueError(f"quantization_config={hf_config['quantization_config']} is not "
                         "supported; supported: unquantized checkpoints")
    act = hf_config.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act={act!r} is not supported; supported: 'silu'")
    for flag in family.bias_flags:
        if hf_config.get(flag, False):
            raise ValueError(f"{flag}=true is not supported for {family.model_type}; "
                             "supported: false")
    hidden = _require(hf_config, "hidden_size")
    heads = _require(hf_config, "num_attention_heads")
    num_layers = _require(hf_config, "num_hidden_layers")
    _check_full_attention(hf_config, num_layers)
    # An absent key takes the family default; an explicit null means "derive it" as below.
    head_dim = hf_config.get("head_dim", family.default_head_dim) or hidden // heads
    kv_heads = hf_config.get("num_key_value_heads", family.default_kv_heads) or heads
    max_positions = hf_config.get("max_position_embeddings", family.default_max_positions)
    rope_theta, rope_scaling = _rope(hf_config, max_positions)
    return ModelConfig(
        vocab_size=_require(hf_config, "vocab_size"), hidden_size=hidden,
        intermediate_size=_require(hf_config, "intermediate_size"), num_layers=num_layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rope_theta=rope_theta,
        rope_scaling=rope_scaling, rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
        qkv_bias=family.qkv_bias, qk_norm=family.qk_norm,
        max_position_embeddings=max_positions, dtype=dtype, param_dtype=dtype)


def _architecture_of(cfg: ModelConfig) -> str:
    if cfg.qk_norm and cfg.qkv_bias:
        raise ValueError("no supported HF architecture has qk_norm with q/k/v-only biases "
                         "(Qwen3's attention_bias also biases o_proj); set one of them False")
    if cfg.qk_norm:
        return "Qwen3ForCausalLM"
    return "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"


def config_to_hf(cfg: ModelConfig, eos_ids: Sequence[int] = (),
                 bos_id: int | None = None) -> dict:
    """config.json contents for `cfg`, readable by transformers 4 and 5 alike."""
    arch = _architecture_of(cfg)
    family = _FAMILIES[arch]
    rope = {"rope_type": "default"}
    if cfg.rope_scaling is not None:
        rope = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    out = {
        "architectures": [arch], "model_type": family.model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        # Both rope layouts, same values: transformers 4 reads rope_theta and rope_scaling;
        # 5 reads rope_parameters (or a non-null rope_scaling). Either alone would leave one
        # of them silently on its default theta=1e4 without scaling.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None if cfg.rope_scaling is None else rope,
        "rope_parameters": {**rope, "rope_theta": cfg.rope_theta},
        "torch_dtype": cfg.param_dtype,
        # Explicit, since LlamaConfig would otherwise assume bos=1, eos=2.
        "bos_token_id": bos_id, "eos_token_id": _one_or_list(eos_ids),
    }
    out.update({flag: False for flag in family.bias_flags})
    return out


def _one_or_list(ids: Sequence[int]) -> int | list[int] | None:
    ids = [int(i) for i in ids]
    return None if not ids else ids[0] if len(ids) == 1 else ids


def _hf_layout(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF tensor name -> (param path, stored transposed) for every tensor of a `cfg` checkpoint.

    torch Linear weights are [out, in]; our kernels are [in, out] like linen Dense.
    """
    layout = {"model.embed_tokens.weight": (("embedding",), False),
              "model.norm.weight": (("final_norm", "scale"), False)}
    if not cfg.tie_word_embeddings:
        layout["lm_head.weight"] = (("lm_head",), True)
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers_{i}"
        layout[hf + "input_layernorm.weight"] = ((ours, "attn_norm", "scale"), False)
        layout[hf + "post_attention_layernorm.weight"] = ((ours, "mlp_norm", "scale"), False)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            layout[f"{hf}self_attn.{proj}.weight"] = ((ours, "attn", proj, "kernel"), True)
        if cfg.qkv_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                layout[f"{hf}self_attn.{proj}.bias"] = ((ours, "attn", proj, "bias"), False)
        if cfg.qk_norm:
            for norm in ("q_norm", "k_norm"):
                layout[f"{hf}self_attn.{norm}.weight"] = ((ours, "attn", norm, "scale"), False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            layout[f"{hf}mlp.{proj}.weight"] = ((ours, "mlp", proj, "kernel"), True)
    return layout


def _abstract_params(cfg: ModelConfig) -> dict:
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def _at(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _some(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def _weight_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> the safetensors file holding it (one file, or shards via the index)."""
    if (path / WEIGHTS_FILE).exists():
        with safe_open(path / WEIGHTS_FILE, framework="numpy") as f:
            return {name: path / WEIGHTS_FILE for name in f.keys()}
    if (path / INDEX_FILE).exists():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    raise FileNotFoundError(f"{path} holds neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def _dtype_name(dtype) -> str:
    """'bfloat16' for "bfloat16", jnp.bfloat16 or np.dtype('bfloat16') alike."""
    try:
        return jnp.dtype(dtype).name
    except TypeError:
        raise ValueError(f"dtype={dtype!r} is not a dtype") from None


def load(path: str | pathlib.Path, dtype="bfloat16") -> tuple[Decoder, dict]:
    """(Decoder, params) from a HF checkpoint directory; params are jnp arrays in `dtype`
    (a name or a dtype: "bfloat16", jnp.float32, ...).

    Raises ValueError for an unsupported config.json, and for missing, unexpected or
    misshapen tensors (naming them). A tied checkpoint's lm_head.weight is ignored.
    """
    path = pathlib.Path(path)
    if not (path / CONFIG_FILE).is_file():
        where = "" if path.is_dir() else " (the directory does not exist)"
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}{where}: a HF checkpoint "
                                f"directory holds {CONFIG_FILE} and {WEIGHTS_FILE} (or "
                                f"{INDEX_FILE} and its shards)")
    cfg = config_from_hf(json.loads((path / CONFIG_FILE).read_text()), _dtype_name(dtype))
    layout = _hf_layout(cfg)
    files = _weight_files(path)
    # Tied checkpoints sometimes store the copy; old Llama ones store RoPE buffers.
    ignored = {n for n in files if n.endswith("rotary_emb.inv_freq")}
    if cfg.tie_word_embeddings:
        ignored.add("lm_head.weight")
    missing = sorted(set(layout) - set(files))
    unexpected = sorted(set(files) - set(layout) - ignored)
    if missing or unexpected:
        raise ValueError(f"{path} does not match its config.json ({_architecture_of(cfg)}, "
                         f"{cfg.num_layers} layers): missing tensors {_some(missing)}, "
                         f"unexpected tensors {_some(unexpected)}")
    abstract = _abstract_params(cfg)
    params: dict = {}
    for file in sorted(set(files[name] for name in layout)):
        with safe_open(file, framework="numpy") as f:
            for name in (n for n in layout if files[n] == file):
                param_path, transposed = layout[name]
                array = f.get_tensor(name)
                want = _at(abstract, param_path).shape
                want = want[::-1] if transposed else want  # the file's own [out, in] layout
                if array.shape != want:
                    raise ValueError(f"{name} in {file.name} has shape {array.shape}; "
                                     f"config.json implies {want}")
                array = array.T if transposed else array
                _set(params, param_path, jnp.asarray(array, dtype=cfg.jnp_param_dtype))
    return Decoder(cfg), params


def _check_params(cfg: ModelConfig, params: dict) -> None:
    want = {jax.tree_util.keystr(p): x.shape
            for p, x in jax.tree_util.tree_leaves_with_path(_abstract_params(cfg))}
    got = {jax.tree_util.keystr(p): np.shape(x)
           for p, x in jax.tree_util.tree_leaves_with_path(params)}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(f"{k}: {got[k]} != {want[k]}" for k in set(want) & set(got) if got[k] != want[k])
    if missing or unexpected or wrong:
        raise ValueError(f"params do not match the config: missing {_some(missing)}, "
                         f"unexpected {_some(unexpected)}, wrong shapes {_some(wrong)}")


def _shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Consecutive groups of names, each under max_shard_bytes unless one tensor is larger."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def save(path: str | pathlib.Path, model: Decoder | ModelConfig, params: dict, *,
         eos_ids: Sequence[int] = (), bos_id: int | None = None,
         max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Writes config.json, generation_config.json and safetensors weights (sharded with an
    index past `max_shard_bytes`) that `transformers.AutoModelForCausalLM` loads exactly.

    `model` is the Decoder or its ModelConfig. Tensors are written in the config's
    `param_dtype`; `params` must be fully addressable here.
    """
    cfg = model.cfg if isinstance(model, Decoder) else model
    path = pathlib.Path(path)
    _check_params(cfg, params)
    layout = _hf_layout(cfg)
    path.mkdir(parents=True, exist_ok=True)
    # Stale weights from an earlier save would shadow or mix with these (transformers reads
    # model.safetensors before any index).
    for stale in [*path.glob("model-*-of-*.safetensors"), path / WEIGHTS_FILE, path / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    dtype = np.dtype(cfg.jnp_param_dtype)
    sizes = {name: _at(params, p).size * dtype.itemsize for name, (p, _) in layout.items()}
    shards = _shards(sizes, max_shard_bytes)
    weight_map = {}
    for i, names in enumerate(shards):
        file = WEIGHTS_FILE if len(shards) == 1 else (
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        tensors = {}
        for name in names:
            param_path, transposed = layout[name]
            array = np.asarray(_at(params, param_path)).astype(dtype, copy=False)
            # safetensors writes the raw buffer, so a transposed view must be made contiguous.
            tensors[name] = np.ascontiguousarray(array.T if transposed else array)
            weight_map[name] = file
        save_file(tensors, path / file, metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2))
    (path / CONFIG_FILE).write_text(json.dumps(config_to_hf(cfg, eos_ids, bos_id), indent=2))
    generation = {"bos_token_id": bos_id, "eos_token_id": _one_or_list(eos_ids)}
    (path / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2))


def export(path: str | pathlib.Path, model: Decoder | ModelConfig, params, *,
           src: str | pathlib.Path, eos_ids: Sequence[int] = ()) -> None:
    """`save` plus the source checkpoint's tokenizer and generation files (`SIDE_FILES`), so
    that transformers, vLLM and SGLang serve the result as they served `src`."""
    src, path = pathlib.Path(src), pathlib.Path(path)
    bos_id = json.loads((src / CONFIG_FILE).read_text()).get("bos_token_id")
    save(path, model, jax.device_get(params), eos_ids=eos_ids, bos_id=bos_id)
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, path / name)
