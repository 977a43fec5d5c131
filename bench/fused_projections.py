"""What fusing q/k/v and gate/up projections would buy a decode step, before the parameter
layout changes: the layers' matmuls alone, unfused (q, k, v, o, gate, up, down: 7 GEMMs per
layer, as `models/decoder.py` has them) against fused (qkv, o, gate_up, down: 4 GEMMs).

    python -m bench.fused_projections --presets qwen2_1p5b,qwen2_0p5b --rows 2,64 --out results.json

Each program runs `--steps` decode-like steps in one jitted loop: per layer an RMS norm, the
q/k/v projections (their sum through o stands in for attention, which is left out), a
norm, gate/up, SiLU and down; weights random bf16 (the fused ones the unfused ones
concatenated), one array per layer as in the model (no slicing of stacked weights). Batch 1
decodes as 2 rows (`decode.generate` duplicates a lone row), so `--rows 2` is batch 1. The best of `--reps` timed calls after a warm-up;
GB/s counts the layer weights read once per step.

Local smoke test (CPU):
    python -m bench.fused_projections --presets tiny --rows 2 --steps 2 --reps 1
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from bench import common
from jaxrl.models.config import PRESETS


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", type=common.csv(str), default=["qwen2_1p5b", "qwen2_0p5b"])
    p.add_argument("--rows", type=common.csv(int), default=[2, 64])
    p.add_argument("--steps", type=int, default=64, help="decode-like steps per timed call")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default="fused_projections.json")
    return p.parse_args(argv)


def weights(cfg, fused: bool, key) -> dict[str, list[jax.Array]]:
    """name -> one bf16 array per layer; the fused ones are the unfused ones concatenated,
    so that both programs compute the same function."""
    e, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, \
        cfg.num_kv_heads * cfg.head_dim
    shapes = {"q": (e, q), "k": (e, kv), "v": (e, kv), "o": (q, e), "gate": (e, f),
              "up": (e, f), "down": (f, e)}
    w = {}
    for name, shape in shapes.items():
        key, *ks = jax.random.split(key, cfg.num_layers + 1)
        w[name] = [(0.02 * jax.random.normal(k, shape)).astype(jnp.bfloat16) for k in ks]
    if not fused:
        return w
    cat = lambda *names: [jnp.concatenate(ws, axis=1) for ws in zip(*(w[n] for n in names))]
    return {"qkv": cat("q", "k", "v"), "o": w["o"], "gate_up": cat("gate", "up"),
            "down": w["down"]}


def rms(x_ME):
    x = x_ME.astype(jnp.float32)
    return (x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)).astype(x_ME.dtype)


def layer(w, i, x_ME, cfg, fused: bool):
    q, kv, f = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    h = rms(x_ME)
    if fused:
        qkv = h @ w["qkv"][i]
        q_, k_, v_ = qkv[:, :q], qkv[:, q:q + kv], qkv[:, q + kv:]
    else:
        q_, k_, v_ = h @ w["q"][i], h @ w["k"][i], h @ w["v"][i]
    x_ME = x_ME + (q_ + jnp.tile(k_ + v_, cfg.num_heads // cfg.num_kv_heads)) @ w["o"][i]
    h = rms(x_ME)
    if fused:
        gu = h @ w["gate_up"][i]
        gate, up = gu[:, :f], gu[:, f:]
    else:
        gate, up = h @ w["gate"][i], h @ w["up"][i]
    return x_ME + (jax.nn.silu(gate) * up) @ w["down"][i]


def measure(cfg, rows: int, fused: bool, args) -> dict:
    w = weights(cfg, fused, jax.random.key(0))
    nbytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(w))

    @jax.jit
    def steps(w, x_ME):
        def body(_, x_ME):
            for i in range(cfg.num_layers):
                x_ME = layer(w, i, x_ME, cfg, fused)
            return rms(x_ME)
        return jax.lax.fori_loop(0, args.steps, body, x_ME)

    x_ME = jnp.ones((rows, cfg.hidden_size), jnp.bfloat16)
    best = min(common.time_calls(lambda: steps(w, x_ME), args.reps))
    ms = best / args.steps * 1e3
    return {"rows": rows, "fused": fused, "ms_per_step": ms, "weight_bytes": nbytes,
            "gb_per_s": nbytes / ms * 1e-6}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    report = {**common.run_info("fused_projections", argv), "rows": []}
    lines = ["| preset | rows | unfused ms / step (GB/s) | fused ms / step (GB/s) | fused / unfused |",
             "|---|---|---|---|---|"]
    for name in args.presets:
        cfg = PRESETS[name]
        for rows in args.rows:
            pair = [measure(cfg, rows, fused, args) for fused in (False, True)]
            for r in pair:
                report["rows"].append({"preset": name, **r})
                common.write_json(args.out, report)  # a killed run keeps what it measured
            a, b = pair
            lines.append(f"| {name} | {rows} | {a['ms_per_step']:.3f} ({a['gb_per_s']:.0f}) | "
                         f"{b['ms_per_step']:.3f} ({b['gb_per_s']:.0f}) | "
                         f"{b['ms_per_step'] / a['ms_per_step']:.3f} |")
            print(lines[-1], flush=True)
    print("\n" + common.heading(report) + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
