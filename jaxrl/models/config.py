"""Decoder hyper-parameters: one dataclass covers Llama-3, Qwen2/2.5 and Qwen3."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (HF `rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2/2.5
    qk_norm: bool = False  # Qwen3: RMSNorm on each head of q and k before RoPE
    max_position_embeddings: int = 32768
    dtype: str = "bfloat16"  # activations
    param_dtype: str = "bfloat16"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; valid: {sorted(_DTYPES)}")

    @property
    def jnp_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        e, f, h, k, d, v = (self.hidden_size, self.intermediate_size, self.num_heads,
                            self.num_kv_heads, self.head_dim, self.vocab_size)
        attn = e * h * d * 2 + e * k * d * 2 + (h * d + 2 * k * d if self.qkv_bias else 0)
        layer = attn + 3 * e * f + 2 * e + (2 * d if self.qk_norm else 0)
        return v * e * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + e


# Shapes of public checkpoints (random weights in tests and benchmarks; real ones via hf.load).
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=True,
                        qkv_bias=True, rope_theta=10000.0, max_position_embeddings=2048),
    # The CPU main job's policy: learns the easy embedded tasks in minutes on 2 cores.
    "small": ModelConfig(vocab_size=128, hidden_size=128, intermediate_size=384, num_layers=4,
                         num_heads=4, num_kv_heads=2, head_dim=32, tie_word_embeddings=True,
                         rope_theta=10000.0, max_position_embeddings=2048),
    "qwen2_0p5b": ModelConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
                              rope_theta=1000000.0, tie_word_embeddings=True, qkv_bias=True),
    "qwen2_1p5b": ModelConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
                              rope_theta=1000000.0, tie_word_embeddings=True, qkv_bias=True),
    "qwen3_0p6b": ModelConfig(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                              num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
                              rope_theta=1000000.0, tie_word_embeddings=True, qk_norm=True),
    "llama3_1b": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                             num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                             rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
                             rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
                             max_position_embeddings=131072),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
