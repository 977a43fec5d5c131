"""Ragged decode attention on a GPU: the Pallas kernel against the masked jnp reference.

    python -m bench.kernel_attention --out attn.json [--check] [--sweep]

bf16, Qwen2.5-0.5B-like heads (H=14, H_kv=2, D=64) and 1.5B-like (H=12, H_kv=2, D=128);
T = 1 (plain decode) and 9 (k+1 verification); row ends `q_slot + T` uniform between 10% and
100% of S_max (seed 0), no left padding. The reference reads all S_max slots of every row;
the kernel only the valid ones, so GB/s and % of HBM count the valid KV bytes for both.

Times are device time per call, as inside a jitted decode step (`bench.common.device_us`): a
jitted chain of n dependent calls (each output is the next query; the calls cycle over copies
of the cache, > 200 MB in all, so that no call finds the cache in L2) minus a chain of one,
over n - 1, each the median of 21 runs after warm-up, each run ended by block_until_ready.
Timing single calls instead measures the ~50 us it takes the GPU machines' hosts to dispatch
and synchronise one. The difference of two medians still jitters by some 10 us (more where
n = 2 calls of a few ms each): read single points under ~30 us, and lone outliers, with care.
The HBM ceiling is measured in the same run the same way (`bench.common.hbm_bandwidth`, over
`--bw-gib` GiB of bf16, default 4: a read-only max and an `x + 1` copy, read + write); % HBM
is against the larger.

--check compares kernel and reference on the GPU first (bf16 and float32, NaN in every slot
the kernel must not read); --sweep times key-block sizes and split counts on a few shapes.
Imports only `kernels` and `bench.common`, nothing of jaxrl.

Local smoke test (CPU, the kernel in interpret mode):
    python -m bench.kernel_attention --out /tmp/attn.json --batches 2 --tokens 1 \
        --lengths 64 --models 0.5B --bw-gib 0.01
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from kernels.ragged_attention import ragged_attention_pallas, ragged_attention_reference

MODELS = {"0.5B": (14, 2, 64), "1.5B": (12, 2, 128)}  # (H, H_kv, D)
ROTATE_BYTES = 200e6
INTERPRET = jax.default_backend() == "cpu"  # a CPU smoke run: the kernel in interpret mode


def ragged_inputs(key, batch, num_tokens, heads, kv_heads, head_dim, s_max, ends_B,
                  dtype=jnp.bfloat16):
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, (batch, num_tokens, heads, head_dim), dtype)
    k = jax.random.normal(kk, (batch, kv_heads, s_max, head_dim), dtype)
    v = jax.random.normal(kv, (batch, kv_heads, s_max, head_dim), dtype)
    return (q, k, v, jnp.asarray(ends_B - num_tokens, jnp.int32), jnp.zeros((batch,), jnp.int32))


def row_ends(batch, s_max, num_tokens, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(max(num_tokens, math.ceil(0.1 * s_max)), s_max + 1, batch)


def valid_kv_bytes(ends_B, kv_heads, head_dim, itemsize=2):
    return int(ends_B.sum()) * kv_heads * head_dim * 2 * itemsize


def attention_chain(fn):
    def step(q, i, kv_sets, q_slot, kv_start):
        k, v = kv_sets[i % len(kv_sets)]
        return fn(q, k, v, q_slot, kv_start).reshape(q.shape)
    return common.chain(step)


def measure(model, batch, num_tokens, s_max, *, block_s=None, num_splits=None, reference=True):
    h, kv, d = MODELS[model]
    ends_B = row_ends(batch, s_max, num_tokens)
    set_bytes = 2 * batch * kv * s_max * d * 2
    copies = int(np.clip(math.ceil(ROTATE_BYTES / set_bytes), 1, 16))
    sets = [ragged_inputs(jax.random.key(i), batch, num_tokens, h, kv, d, s_max, ends_B)
            for i in range(copies)]
    q, _, _, q_slot, kv_start = sets[0]
    args = (q, tuple((k, v) for _, k, v, _, _ in sets), q_slot, kv_start)
    kernel = functools.partial(ragged_attention_pallas, block_s=block_s, num_splits=num_splits,
                               interpret=INTERPRET)
    row = {"model": model, "B": batch, "T": num_tokens, "S_max": s_max, "block_s": block_s,
           "num_splits": num_splits, "valid_bytes": valid_kv_bytes(ends_B, kv, d),
           "pallas_us": common.device_us(attention_chain(kernel), args)}
    if reference:
        row["reference_us"] = common.device_us(attention_chain(ragged_attention_reference), args)
    return row


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def check_one(model, batch, num_tokens, s_max, dtype, kv_start):
    """Relative errors of kernel and reference against the reference in float32 on the same
    (rounded) inputs; the kernel gets NaN in every slot outside the rows."""
    h, kv, d = MODELS[model]
    ends_B = row_ends(batch, s_max, num_tokens, seed=1)
    q, k, v, q_slot, _ = ragged_inputs(jax.random.key(7), batch, num_tokens, h, kv, d, s_max,
                                       ends_B, dtype)
    start_B = jnp.asarray(np.minimum(kv_start, ends_B - num_tokens), jnp.int32)
    slot_1S = jnp.arange(s_max)[None]
    outside_B11S = ((slot_1S < start_B[:, None]) | (slot_1S >= ends_B[:, None]))[:, None, :, None]
    poison = lambda x: jnp.where(outside_B11S, jnp.nan, x)  # noqa: E731
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        truth = jax.jit(ragged_attention_reference)(f32(q), f32(k), f32(v), q_slot, start_B)
        want = jax.jit(ragged_attention_reference)(q, k, v, q_slot, start_B)
        got = jax.jit(functools.partial(ragged_attention_pallas, interpret=INTERPRET))(
            q, poison(k), poison(v), q_slot, start_B)
    err, ref_err = rel_err(got, truth), rel_err(want, truth)
    return {"model": model, "B": batch, "T": num_tokens, "S_max": s_max,
            "dtype": jnp.dtype(dtype).name, "kv_start": kv_start, "rel_err": err,
            "reference_rel_err": ref_err,
            "finite": bool(np.isfinite(np.asarray(got, np.float32)).all()),
            "ok": bool(err <= 1.5 * ref_err + 1e-5)}


def run_checks():
    rows = [check_one(m, 5, t, s, dt, kv_start)
            for m in MODELS for t in (1, 9) for s, kv_start in ((100, 0), (2048, 37))
            for dt in (jnp.bfloat16, jnp.float32)]
    for r in rows:
        print(f"check {r['model']} T={r['T']} S={r['S_max']} {r['dtype']} "
              f"kv_start<={r['kv_start']}: rel_err={r['rel_err']:.2e} "
              f"(reference {r['reference_rel_err']:.2e}) finite={r['finite']} {'PASS' if r['ok'] and r['finite'] else 'FAIL'}")
    return rows


def run_sweep(hbm, deadline):
    """Kernel times over key-block sizes and split counts (None: the kernel's default)."""
    rows = []
    for model in MODELS:
        for batch, num_tokens, s_max in ((64, 1, 32768), (16, 9, 8192), (64, 9, 2048),
                                         (1, 1, 32768)):
            for block_s in (32, 64, 128):
                for splits in (None, 4, 16, 64):
                    if time.time() > deadline:
                        return rows
                    r = measure(model, batch, num_tokens, s_max, block_s=block_s,
                                num_splits=splits, reference=False)
                    r["pct_hbm"] = 100 * r["valid_bytes"] / r["pallas_us"] / 1e3 / hbm
                    print(f"sweep {model} B={batch} T={num_tokens} S={s_max} block_s={block_s} "
                          f"splits={splits}: {r['pallas_us']:.1f} us {r['pct_hbm']:.0f}% HBM",
                          flush=True)
                    rows.append(r)
    return rows


def markdown(rows, hbm):
    lines = ["| model | B | T | S_max | valid KV MB | pallas us | reference us | speedup "
             "| pallas GB/s | % HBM | reference GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gbps = lambda us: r["valid_bytes"] / us / 1e3  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['B']} | {r['T']} | {r['S_max']} | {r['valid_bytes'] / 1e6:.1f} "
            f"| {r['pallas_us']:.1f} | {r['reference_us']:.1f} "
            f"| {r['reference_us'] / r['pallas_us']:.1f}x | {gbps(r['pallas_us']):.0f} "
            f"| {100 * gbps(r['pallas_us']) / hbm:.0f}% | {gbps(r['reference_us']):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON results path")
    parser.add_argument("--check", action="store_true", help="check against the reference first")
    parser.add_argument("--sweep", action="store_true",
                        help="after the table, time block sizes and split counts")
    parser.add_argument("--batches", type=common.csv(int), default=[1, 16, 64])
    parser.add_argument("--tokens", type=common.csv(int), default=[1, 9])
    parser.add_argument("--lengths", type=common.csv(int), default=[2048, 8192, 32768])
    parser.add_argument("--models", type=common.csv(str), default=list(MODELS))
    parser.add_argument("--bw-gib", type=float, default=None,
                        help="size of the bandwidth probe (default 4 GiB on GPU, 1/16 on CPU)")
    parser.add_argument("--time-budget-s", type=float, default=float("inf"),
                        help="start no new table row or sweep point after this long")
    args = parser.parse_args(argv)
    deadline = time.time() + args.time_budget_s
    result = common.run_info("kernel_attention", argv)
    bw = result["hbm"] = common.hbm_bandwidth(common.probe_gib(args.bw_gib))
    hbm = bw["gbps"]
    print(f"{result['device']['kind']}: read {bw['read_gbps']:.0f} GB/s, "
          f"copy {bw['copy_gbps']:.0f} GB/s", flush=True)
    save = lambda: common.write_json(args.out, result)  # noqa: E731

    if args.check:
        result["check"] = run_checks()
        save()
    result["rows"] = []
    shapes = [(m, b, t, s) for m in args.models for b in args.batches
              for t in args.tokens for s in args.lengths]
    for shape in shapes:
        if time.time() > deadline:
            break
        result["rows"].append(measure(*shape))
        print(markdown(result["rows"][-1:], hbm).splitlines()[-1], flush=True)
        save()
    if args.sweep:
        result["sweep"] = run_sweep(hbm, deadline)
        save()
    print(f"\n{common.heading(result)}; HBM read {bw['read_gbps']:.0f} / copy "
          f"{bw['copy_gbps']:.0f} GB/s\n")
    print(markdown(result["rows"], hbm))


if __name__ == "__main__":
    main()
