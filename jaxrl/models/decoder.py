"""Functional Flax (linen) decoder for the Llama-3, Qwen2/2.5 and Qwen3 families.

    logits_BTV = Decoder(cfg).apply({'params': params}, tokens_BT)
    logits_BTV, cache = Decoder(cfg).apply({'params': params}, tokens_BT, cache=cache)

Parameter names follow the HF checkpoints one to one (see `hf.py`); every parameter carries
logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`) that `sharding.py` maps to
mesh axes. Activations run in `cfg.dtype`; norms, softmax and logits in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl.models.attention import PREFILL_IMPLS, attend
from jaxrl.models.config import ModelConfig
from jaxrl.models.kv_cache import KVCache
from kernels.dispatch import IMPLS
from kernels.ragged_attention import attend_reference, ragged_attention


def _init(axes):
    return nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    # Llama-3 scaling: long wavelengths divided by `factor`, short kept, a smooth ramp between.
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x_BTHD: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """HF's rotate-half convention: the two halves of each head are (re, im)."""
    angles_BTF = positions_BT[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angles_BTF)[:, :, None, :]
    sin = jnp.sin(angles_BTF)[:, :, None, :]
    x = x_BTHD.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHD.dtype)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                                 (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


class Attention(nn.Module):
    cfg: ModelConfig
    attention_impl: str = "reference"
    prefill_attention: str = "reference"

    @nn.compact
    def __call__(self, x_BTE, positions_BT, mask_BTS, cache: KVCache | None, layer: int,
                 attend_cache: bool):
        cfg = self.cfg
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dense = lambda n, axes, bias, name: nn.Dense(  # noqa: E731
            n, use_bias=bias, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
            kernel_init=_init(axes), bias_init=nn.with_logical_partitioning(
                nn.initializers.zeros, axes[1:]), name=name)
        b, t, _ = x_BTE.shape
        q = dense(h * d, ("embed", "heads"), cfg.qkv_bias, "q_proj")(x_BTE).reshape(b, t, h, d)
        k = dense(kv * d, ("embed", "kv_heads"), cfg.qkv_bias, "k_proj")(x_BTE).reshape(b, t, kv, d)
        v = dense(kv * d, ("embed", "kv_heads"), cfg.qkv_bias, "v_proj")(x_BTE).reshape(b, t, kv, d)
        if cfg.qk_norm:
            norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype,  # noqa: E731
                                        cfg.jnp_param_dtype, "head_dim", name=name)
            q, k = norm("q_norm")(q), norm("k_norm")(k)
        inv_freq = rope_inv_freq(cfg)
        q = apply_rope(q, positions_BT, inv_freq)
        k = apply_rope(k, positions_BT, inv_freq)
        if cache is not None:
            # Writes at the old lengths_B: the new tokens sit at slots lengths_B + t, and
            # lengths_B advances only after the last layer (Decoder.__call__).
            cache = cache.write(layer, k, v)
        if cache is None or not attend_cache:  # the T new tokens attend to themselves
            out = attend(q, k, v, mask_BTS, self.prefill_attention)
        elif self.attention_impl != "reference":
            out = ragged_attention(q, cache.k[layer], cache.v[layer], cache.lengths_B,
                                   cache.starts_B, impl=self.attention_impl)
        else:
            out = attend_reference(q, cache.k[layer], cache.v[layer], mask_BTS)
        out = dense(cfg.hidden_size, ("heads", "embed"), False, "o_proj")(out)
        return out, cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTE):
        cfg = self.cfg
        dense = lambda n, axes, name: nn.Dense(  # noqa: E731
            n, use_bias=False, dtype=cfg.jnp_dtype, param_dtype=cfg.jnp_param_dtype,
            kernel_init=_init(axes), name=name)
        gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x_BTE)
        up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x_BTE)
        return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    cfg: ModelConfig
    attention_impl: str = "reference"
    prefill_attention: str = "reference"

    @nn.compact
    def __call__(self, x_BTE, positions_BT, mask_BTS, cache, layer, attend_cache):
        """`layer` indexes the cache: an int, or traced when the layers are scanned."""
        cfg = self.cfg
        norm = lambda name: RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype,  # noqa: E731
                                    name=name)
        attention = Attention(cfg, self.attention_impl, self.prefill_attention, name="attn")
        attn_out, cache = attention(norm("attn_norm")(x_BTE), positions_BT, mask_BTS, cache,
                                    layer, attend_cache)
        x_BTE = x_BTE + attn_out
        x_BTE = x_BTE + MLP(cfg, name="mlp")(norm("mlp_norm")(x_BTE))
        return x_BTE, cache


def unembed(x_BTE: jax.Array, unembed_EV: jax.Array) -> jax.Array:
    """float32 logits `[B, T, V]` of activations and unembedding in the activation dtype.

    Autodiff of the float32-accumulating product would multiply the float32 logit
    gradient `[B, T, V]` with the bfloat16 operands in float32 GEMMs (TF32 on an H100/H200:
    half the bfloat16 rate; on the 0.5B shape's 152k vocabulary they were the update's
    largest kernels), and round the results to bfloat16 anyway. Below float32 the gradient
    is rounded to the activation dtype first, so that the two backward GEMMs run at its rate
    (float32 accumulation kept); in float32 it is plain autodiff."""
    if x_BTE.dtype == jnp.float32:
        return _logits(x_BTE, unembed_EV)
    return _low_precision_logits(x_BTE, unembed_EV)


def _logits(x_BTE, unembed_EV):
    return jnp.einsum("bte,ev->btv", x_BTE, unembed_EV, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _low_precision_logits(x_BTE, unembed_EV):
    return _logits(x_BTE, unembed_EV)


def _low_precision_logits_fwd(x_BTE, unembed_EV):
    return _logits(x_BTE, unembed_EV), (x_BTE, unembed_EV)


def _low_precision_logits_bwd(residuals, g_BTV):
    x_BTE, unembed_EV = residuals
    g_BTV = g_BTV.astype(x_BTE.dtype)
    dx_BTE = jnp.einsum("btv,ev->bte", g_BTV, unembed_EV, preferred_element_type=jnp.float32)
    dw_EV = jnp.einsum("bte,btv->ev", x_BTE, g_BTV, preferred_element_type=jnp.float32)
    return dx_BTE.astype(x_BTE.dtype), dw_EV.astype(unembed_EV.dtype)


_low_precision_logits.defvjp(_low_precision_logits_fwd, _low_precision_logits_bwd)


def _masks(tokens_BT, cache, attention_mask_BT, positions_BT, prefill, segment_ids_BT):
    """(positions_BT, mask_BTS) for the three call forms: no cache, prefill, cached step."""
    b, t = tokens_BT.shape
    q_BT1 = jnp.arange(t)[None, :, None]
    if cache is None:
        valid_BT = (jnp.ones((b, t), bool) if attention_mask_BT is None
                    else attention_mask_BT.astype(bool))
        if positions_BT is None:
            positions_BT = jnp.maximum(jnp.cumsum(valid_BT, axis=1) - 1, 0)
        mask = (jnp.arange(t)[None, None, :] <= q_BT1) & valid_BT[:, None, :]
        if segment_ids_BT is not None:
            mask = mask & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
        return positions_BT, mask
    if segment_ids_BT is not None:
        raise ValueError("segment_ids_BT is for the no-cache form only (packed training rows)")
    if positions_BT is None:
        positions_BT = jnp.maximum(cache.positions(t), 0)
    if prefill:  # keys are only the new tokens, written at slots lengths_B + j
        key_slot_BS = cache.lengths_B[:, None] + jnp.arange(t)
        causal = jnp.arange(t)[None, None, :] <= q_BT1
    else:  # keys are the whole cache, including the new tokens just written
        key_slot_BS = jnp.broadcast_to(jnp.arange(cache.max_len), (b, cache.max_len))
        causal = key_slot_BS[:, None, :] <= (cache.lengths_B[:, None, None] + q_BT1)
    mask = causal & (key_slot_BS >= cache.starts_B[:, None])[:, None, :]
    return positions_BT, mask


class Decoder(nn.Module):
    cfg: ModelConfig
    # How a cached step attends to the cache (`kernels.dispatch.IMPLS`): "reference"
    # masks all S_max slots; "pallas"/"auto" read only each row's valid slots.
    attention_impl: str = "reference"
    # How the no-cache and prefill forms attend to their own tokens (models/attention.py:
    # PREFILL_IMPLS): "reference" materialises the scores; "cudnn"/"auto" fuse them on GPU.
    prefill_attention: str = "reference"
    # One compiled layer run Y times (`jax.lax.scan`, the cache stacked: `init_cache(...,
    # stacked=True)`) instead of Y unrolled copies: a program's compile then grows little
    # with depth. Params may come as `stack_layers` gives them (what a program that runs
    # many forwards should pass, so that the stack is made once) or per layer (stacked at
    # each call). Off by default: on an H200 it compiled the 0.5B DAS program 2-3x faster
    # but decoded 1.4-2.1x slower (XLA copies each layer's slices; BENCHMARKS.md).
    scan_layers: bool = False
    # Recompute each layer's activations in the backward pass instead of keeping them: a
    # gradient then holds each layer's input, not its internals (the `[B, H, T, T]` scores,
    # the MLP's `[B, T, F]`), for about one more forward of compute. Forward-only programs
    # (rollouts, evaluation) lower exactly as without it (jax.checkpoint adds its barriers
    # only when differentiated).
    remat: bool = False

    @nn.compact
    def __call__(self, tokens_BT: jax.Array, *, cache: KVCache | None = None,
                 attention_mask_BT: jax.Array | None = None,
                 positions_BT: jax.Array | None = None, prefill: bool = False,
                 logits_at_BK: jax.Array | None = None,
                 segment_ids_BT: jax.Array | None = None):
        """Logits `[B, T, V]` (float32), or `(logits, cache)` when a cache is given.

        Without a cache: causal attention over `tokens_BT`; `attention_mask_BT` (1 = token)
        masks padding on either side and sets positions to the count of earlier tokens.
        With a cache: the T tokens are appended at each row's `lengths_B` and attend to the
        row's valid slots; `lengths_B` advances by T (callers shrink it to roll back).
        `prefill=True` promises the cache holds nothing before these tokens, so attention
        reads only them (cheaper than reading all S_max slots).
        `logits_at_BK` selects K positions per row to unembed (e.g. the last prompt token).
        `segment_ids_BT` (no cache only) packs several sequences in a row: a token attends
        only to earlier tokens of its own segment id (give `positions_BT` per segment).
        """
        cfg = self.cfg
        if self.attention_impl not in IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; valid: {IMPLS}")
        if self.prefill_attention not in PREFILL_IMPLS:
            raise ValueError(f"prefill_attention={self.prefill_attention!r}; valid: "
                             f"{PREFILL_IMPLS}")
        positions_BT, mask_BTS = _masks(tokens_BT, cache, attention_mask_BT, positions_BT,
                                        prefill, segment_ids_BT)
        embedding = self.param("embedding", _init(("vocab", "embed")),
                               (cfg.vocab_size, cfg.hidden_size), cfg.jnp_param_dtype)
        x_BTE = jnp.take(embedding, tokens_BT, axis=0).astype(cfg.jnp_dtype)
        if self.scan_layers and not self.is_initializing():
            x_BTE, cache = self._scanned_layers(x_BTE, positions_BT, mask_BTS, cache,
                                                not prefill)
        else:
            # static: `layer` and `attend_cache` (self is argument 0)
            block_cls = nn.remat(Block, static_argnums=(5, 6)) if self.remat else Block
            for i in range(cfg.num_layers):
                x_BTE, cache = block_cls(cfg, self.attention_impl, self.prefill_attention,
                                         name=f"layers_{i}")(
                    x_BTE, positions_BT, mask_BTS, cache, i, not prefill)
        x_BTE = RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype, name="final_norm")(x_BTE)
        if logits_at_BK is not None:
            x_BTE = jnp.take_along_axis(x_BTE, logits_at_BK[..., None], axis=1)
        if cfg.tie_word_embeddings:
            unembed_EV = embedding.T
        else:
            unembed_EV = self.param("lm_head", _init(("embed", "vocab")),
                                    (cfg.hidden_size, cfg.vocab_size), cfg.jnp_param_dtype)
        out = unembed(x_BTE, unembed_EV.astype(cfg.jnp_dtype))
        if cache is None:
            return out
        return out, cache.advance(tokens_BT.shape[1])

    def _scanned_layers(self, x_BTE, positions_BT, mask_BTS, cache, attend_cache):
        """The layers as one `Block` applied in a scan over `stack_layers`' params, the cache
        in the carry (each layer writes its slice in place)."""
        if cache is not None and not cache.stacked:
            raise ValueError("a Decoder with scan_layers=True takes a stacked KV cache: "
                             "kv_cache.init_cache(..., stacked=True)")
        params = self.variables["params"]
        stacked = params["layers"] if "layers" in params else stack_layers(params)["layers"]
        block = Block(self.cfg, self.attention_impl, self.prefill_attention, parent=None)

        def layer(carry, xs):
            x_BTE, cache = carry
            params_i, i = xs
            return block.apply({"params": params_i}, x_BTE, positions_BT, mask_BTS, cache, i,
                               attend_cache), None

        if self.remat:  # inside a scan CSE cannot merge the recomputation away (JAX docs)
            layer = jax.checkpoint(layer, prevent_cse=False)
        (x_BTE, cache), _ = jax.lax.scan(
            layer, (x_BTE, cache), (stacked, jnp.arange(self.cfg.num_layers, dtype=jnp.int32)))
        return x_BTE, cache


def stack_layers(params: dict) -> dict:
    """`params` with its `layers_{i}` replaced by one tree `layers` whose arrays stack the
    layers' on a leading axis: the form a `scan_layers` Decoder reads without copying."""
    names = sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k[7:]))
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in names))}


def for_forwards(model: Decoder, params: dict) -> dict:
    """`params` as `model`'s forwards read them without a copy: stacked (`stack_layers`)
    when it scans its layers. A program that runs many forwards (a decode loop) calls this
    once before its loop."""
    return stack_layers(params) if model.scan_layers and "layers" not in params else params


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Random params (plain arrays; logical axes come from `param_axes`): the embedding,
    final norm and unembedding from `rng`'s first split, layer i from split i + 1. Every
    layer comes from one small jitted program, compiled once: the whole model's init as one
    program compiles each layer's again (the 0.5B shape: 10.4 s on a 2-core CPU against
    0.8 s for one layer, and about 85 s on an H200). So do not jit this function whole."""
    keys = jax.random.split(rng, cfg.num_layers + 1)
    params = _init_outside_layers(cfg, keys[0])
    for i in range(cfg.num_layers):
        params[f"layers_{i}"] = _init_layer(cfg, keys[i + 1])
    return params


@functools.partial(jax.jit, static_argnums=0)
def _init_layer(cfg: ModelConfig, rng: jax.Array) -> dict:
    x_BTE = jnp.zeros((1, 1, cfg.hidden_size), cfg.jnp_dtype)
    variables = Block(cfg).init(rng, x_BTE, jnp.zeros((1, 1), jnp.int32),
                                jnp.ones((1, 1, 1), bool), None, 0, False)
    return nn.meta.unbox(variables["params"])


@functools.partial(jax.jit, static_argnums=0)
def _init_outside_layers(cfg: ModelConfig, rng: jax.Array) -> dict:
    """A one-layer model's params but its layer (which the compiler then never computes)."""
    one = dataclasses.replace(cfg, num_layers=1)
    params = nn.meta.unbox(Decoder(one).init(rng, jnp.zeros((1, 1), jnp.int32))["params"])
    return {name: p for name, p in params.items() if name != "layers_0"}


def param_axes(cfg: ModelConfig) -> dict:
    """The logical axis names of every param, as a pytree of `PartitionSpec`s."""
    abstract = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    return nn.get_partition_spec(abstract["params"])
