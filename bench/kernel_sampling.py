"""The speculative-sampling Pallas kernel against its XLA reference on one GPU, in one run.

    python -m bench.kernel_sampling --out results.json
    python -m bench.kernel_sampling --sections speculative_sampling --batches 64 --positions 1,5 --reps 20

Section `speculative_sampling` (kernels/speculative_sampling): `speculative_sample_pallas`
(Triton) against `speculative_sample_reference` (XLA), both under `jax.jit`, on bf16 logits
[B, K, V] (V = 151936, Qwen2's vocabulary; random normal logits with standard deviation 3),
temperature 1 and no top-k/top-p for every (B, K), plus a few lines with top-p 0.9, top-k
50 and greedy rows. Each line gives the median of `--reps` timed calls after `--warmup`
calls, each call waited for with `block_until_ready`; the achieved bandwidth counts the
logits' bytes read once; the fraction is of the HBM bandwidth measured in the same run
(`bench.common.hbm_bandwidth` over `--bw-gib` GiB); the
match rate is the share of the B*K tokens on which the kernel and the reference agree on
this GPU, and "ref dropped picks" counts the positions where the reference sampled a token
that its own top-k/top-p dropped, which +inf noise made possible before the 23-bit uniform
of kernels/sampling.py (BENCHMARKS.md): there the two differ by design. Inputs smaller than
`_ROTATE_BYTES` are rotated among copies, so that repeated calls do not time the L2 cache.

Sections are functions `(args, hbm, emit) -> (rows, markdown)` in SECTIONS; `main` runs the ones
named by `--sections`, prints each table and writes every row to `--out` as it finishes, so
a killed run keeps what it measured. To add one, write its function and its arguments and
register it in SECTIONS (the ragged attention kernel has its own script, bench.kernel_attention).

Local smoke test (CPU, the kernel in interpret mode, tiny vocabulary):
    python -m bench.kernel_sampling --vocab 1000 --batches 2 --positions 1,2 --reps 2 --bw-gib 0.01
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from kernels.speculative_sampling import speculative_sample_pallas, speculative_sample_reference

QWEN2_VOCAB = 151936
_ROTATE_BYTES = 256 << 20  # several times the L2 of an H100 (50 MB) or H200 (60 MB)


def log(msg: str) -> None:
    print(f"[kernels-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", type=common.csv(str), default=["speculative_sampling"],
                   help=f"comma-separated, from {sorted(SECTIONS)}")
    p.add_argument("--out", default=None, help="JSON file for all rows and the run's metadata")
    p.add_argument("--reps", type=int, default=20, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after the compiling one")
    p.add_argument("--bw-gib", type=float, default=None,
                   help="size of the bandwidth probe (default 4 GiB on GPU, 1/16 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    # speculative_sampling
    p.add_argument("--vocab", type=int, default=QWEN2_VOCAB)
    p.add_argument("--batches", type=common.csv(int), default=[64, 256, 1024], help="rows B")
    p.add_argument("--positions", type=common.csv(int), default=[1, 5, 17], help="K = drafts + 1")
    p.add_argument("--block-v", type=common.csv(int), default=[1024],
                   help="kernel vocabulary tiles to time (each a line)")
    p.add_argument("--no-extra", action="store_true",
                   help="skip the top-p, top-k and greedy lines")
    args = p.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; valid: {sorted(SECTIONS)}")
    if args.reps < 1 or args.warmup < 0:
        p.error("--reps must be >= 1 and --warmup >= 0")
    return args


# --------------------------------------------------------------- speculative_sampling

def verify_cases(args) -> list[dict]:
    """(B, K, settings) lines: the RL setting for every shape, then the filtered and greedy."""
    plain = dict(temperature=1.0, top_k=0, top_p=1.0)
    cases = [dict(b=b, k=k, **plain) for b in args.batches for k in args.positions]
    if not args.no_extra:
        b = args.batches[min(1, len(args.batches) - 1)]
        cases += [dict(b=b, k=5, temperature=1.0, top_k=0, top_p=0.9),
                  dict(b=b, k=5, temperature=0.7, top_k=50, top_p=1.0),
                  dict(b=b, k=5, temperature=0.0, top_k=0, top_p=1.0)]
    return cases


def verify_inputs(case: dict, vocab: int, seed: int) -> list[tuple]:
    """Argument tuples of `verify`, rotated copies of the logits when they are small."""
    b, k = case["b"], case["k"]
    nbytes = b * k * vocab * 2
    copies = max(1, math.ceil(_ROTATE_BYTES / nbytes))
    ks = jax.random.split(jax.random.key(seed), copies + 2)
    keys = jax.random.bits(ks[0], (b, k, 2), jnp.uint32)
    drafts = jax.random.randint(ks[1], (b, k - 1), 0, vocab, jnp.int32)
    settings = (jnp.full((b,), k - 1, jnp.int32),
                jnp.full((b,), case["temperature"], jnp.float32),
                jnp.full((b,), case["top_k"], jnp.int32),
                jnp.full((b,), case["top_p"], jnp.float32))
    return [(3.0 * jax.random.normal(ks[2 + c], (b, k, vocab), jnp.bfloat16), drafts)
            + settings + (keys,) for c in range(copies)]


def bench_verify_case(case: dict, args, hbm: dict) -> list[dict]:
    inputs = verify_inputs(case, args.vocab, args.seed)
    logits_bytes = case["b"] * case["k"] * args.vocab * 2
    reference = jax.jit(speculative_sample_reference)
    want = jax.device_get(reference(*inputs[0]))
    ref_us = 1e6 * statistics.median(common.time_calls(reference, args.reps, args.warmup + 1, inputs))
    # Positions where the reference sampled a token that top-k/top-p dropped (its +inf-noise
    # NaN, module docstring): the kernel differs there by design.
    dropped = int(np.sum(~np.isfinite(want[3])))
    rows = []
    for block_v in args.block_v:
        row = dict(case, vocab=args.vocab, block_v=block_v, reference_us=ref_us,
                   reference_dropped_picks=dropped)
        try:
            kernel = jax.jit(lambda *a, bv=block_v: speculative_sample_pallas(
                *a, block_v=bv, interpret=jax.default_backend() == "cpu"))
            got = jax.device_get(kernel(*inputs[0]))
            us = 1e6 * statistics.median(common.time_calls(kernel, args.reps, args.warmup + 1, inputs))
            gbps = logits_bytes / us / 1e3
            row.update(
                pallas_us=us, pallas_gbps=gbps, hbm_fraction=gbps / hbm["gbps"],
                speedup=ref_us / us, token_match=float(np.mean(got[0] == want[0])),
                accepted_match=float(np.mean(got[1] == want[1])),
                logprob_max_abs_diff=float(np.max(np.abs(got[2] - want[2]))),
                sample_logprob_max_abs_diff=float(np.max(np.abs(got[3] - want[3]))))
        except Exception as e:  # noqa: BLE001  (record it and go on to the next line)
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
        log(json.dumps(row))
        rows.append(row)
    return rows


def verify_table(rows: list[dict]) -> str:
    head = ("| B | K | settings | block_v | XLA ref (us) | Pallas (us) | speedup | GB/s | "
            "% HBM | token match | ref dropped picks |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        settings = f"T={r['temperature']:g} top_k={r['top_k']} top_p={r['top_p']:g}"
        if "error" in r:
            lines.append(f"| {r['b']} | {r['k']} | {settings} | {r['block_v']} | "
                         f"{r['reference_us']:.0f} | error: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['b']} | {r['k']} | {settings} | {r['block_v']} | "
                     f"{r['reference_us']:.0f} | {r['pallas_us']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['pallas_gbps']:.0f} | {100 * r['hbm_fraction']:.0f}% | "
                     f"{100 * r['token_match']:.2f}% | {r['reference_dropped_picks']} |")
    return "\n".join(lines)


def speculative_sampling_section(args, hbm: dict, emit) -> tuple[list[dict], str]:
    rows = []
    for case in verify_cases(args):
        for row in bench_verify_case(case, args, hbm):
            rows.append(row)
            emit("speculative_sampling", row)
    return rows, verify_table(rows)


SECTIONS = {"speculative_sampling": speculative_sampling_section}


# ------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    results = {"meta": common.run_info("kernel_sampling", argv),
               "sections": {name: [] for name in args.sections}}

    def emit(section: str, row: dict) -> None:
        results["sections"][section].append(row)
        if args.out:
            common.write_json(args.out, results)

    log(f"{results['meta']}")
    results["meta"]["hbm"] = hbm = common.hbm_bandwidth(common.probe_gib(args.bw_gib))
    log(f"HBM: copy {hbm['copy_gbps']:.0f} GB/s, read {hbm['read_gbps']:.0f} GB/s")
    tables = [SECTIONS[name](args, hbm, emit)[1] for name in args.sections]
    print(f"\n{common.heading(results['meta'])}; HBM {hbm['gbps']:.0f} GB/s "
          f"(copy {hbm['copy_gbps']:.0f}, read {hbm['read_gbps']:.0f})\n")
    for table in tables:
        print(table + "\n")
    return results


if __name__ == "__main__":
    main()
