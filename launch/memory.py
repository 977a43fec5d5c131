"""Per-chip memory of GRPO with DAS for Qwen2.5-7B / 32B: the arithmetic behind the table in
launch/README.md (python launch/memory.py prints it). Nothing here was measured."""

GIB = 2**30
MODELS = {  # Qwen2.5 config.json: layers, hidden, MLP width, query / KV heads, head dim, vocab
    "Qwen2.5-7B": dict(layers=28, hidden=3584, mlp=18944, heads=28, kv_heads=4, head_dim=128,
                       vocab=152064, tied=False),
    "Qwen2.5-32B": dict(layers=64, hidden=5120, mlp=27648, heads=40, kv_heads=8, head_dim=128,
                        vocab=152064, tied=False),
}
# (model, slice, chips, HBM GiB per chip, mesh data x fsdp x tensor, rl.num_minibatches)
RECIPES = [("Qwen2.5-7B", "TPU v5p-32", 16, 95, (1, 16, 1), 16),
           ("Qwen2.5-7B", "8x H200", 8, 141, (1, 8, 1), 16),
           ("Qwen2.5-32B", "TPU v5p-64", 32, 95, (1, 16, 2), 16),
           ("Qwen2.5-32B", "8x H200", 8, 141, (1, 8, 1), 32)]
# The step: P prompts x G generations, prompt L + N new tokens, DAS drafts up to K.
P, G, L, N, K = 32, 8, 512, 1024, 16


def params(m) -> int:
    attn = m["hidden"] * (m["heads"] + 2 * m["kv_heads"]) * m["head_dim"] \
        + (m["heads"] + 2 * m["kv_heads"]) * m["head_dim"] + m["heads"] * m["head_dim"] * m["hidden"]
    layer = attn + 3 * m["hidden"] * m["mlp"] + 2 * m["hidden"]
    return m["layers"] * layer + m["vocab"] * m["hidden"] * (1 if m["tied"] else 2) + m["hidden"]


def per_chip(m, mesh, minibatches):
    data, fsdp, tensor = mesh
    shards, rows_ways = fsdp * tensor, data * fsdp
    n = params(m)
    b, s, t, rows_m = P * G, L + N + K + 1, L + N, P * G // minibatches
    kv_ways = tensor if m["kv_heads"] % tensor == 0 else 1
    kv_token = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * 2  # k and v, bf16
    # Update activations kept for the backward pass of one minibatch, per layer (Korthikanti
    # et al. 2022, bf16, no recomputation): 34 * T * E bytes per row, plus 5 * H * T^2 for the
    # attention scores (the reference attention materializes them); and the float32 logits.
    acts = rows_m * m["layers"] * (34 * t * m["hidden"] + 5 * m["heads"] * t * t)
    logits = rows_m * t * m["vocab"] * 4
    return {"params (f32)": 4 * n / shards, "AdamW mu+nu (f32)": 8 * n / shards,
            "grads (f32)": 4 * n / shards,
            "KV cache (bf16)": b * s * kv_token / rows_ways / kv_ways,
            "update activations": (acts + logits) / rows_ways / tensor}


def table() -> str:
    lines = ["| model | slice | mesh (data, fsdp, tensor), rl.num_minibatches | " + " | ".join(
        per_chip(MODELS["Qwen2.5-7B"], (1, 8, 1), 16)) + " | total | HBM |",
        "|" + "---|" * 10]
    for name, where, chips, hbm, mesh, minibatches in RECIPES:
        parts = per_chip(MODELS[name], mesh, minibatches)
        cells = [f"{v / GIB:.1f}" for v in parts.values()]
        lines.append(f"| {name} ({params(MODELS[name]) / 1e9:.2f}B) | {where} ({chips} chips) | "
                     f"{mesh}, {minibatches} minibatches | "
                     + " | ".join(cells) + f" | {sum(parts.values()) / GIB:.1f} | {hbm} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"P={P} prompts x G={G}, L={L} prompt + N={N} new tokens, DAS K={K}; GiB per chip")
    print(table())
