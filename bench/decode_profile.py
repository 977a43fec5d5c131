"""Where a decode step's time goes: a profile of `jaxrl.rollout.decode.generate`, per kernel.

    python -m bench.decode_profile --models qwen2_0p5b,qwen2_1p5b --batches 1,64 --out prof.json

For each model preset (random bf16 weights) and batch: prompts of `--prompt-len` tokens,
exactly `--new-tokens` sampled (temperature 1), the program compiled and run once, then run
once more under `jax.profiler.trace` (Perfetto JSON). From the trace's GPU stream rows
(the kernels as the device ran them) this reports, per decode step (the run's kernels minus
a `max_new_tokens=1` run's, the prefill, over the N - 1 steps):

- wall ms per step (the same subtraction on the wall clock, each the best of 3 runs; on a
  loaded host the difference of two short runs can even come out negative), kernel-busy ms
  per step and
  their difference, the idle device time (launch gaps, the loop's host round trip);
- kernels launched per step;
- the kernels that take the most time, grouped by name (XLA names a fusion after its
  root op; cuBLAS/cuDNN kernels keep their library names), with ms per step and calls;
- the HBM floor of a step (weights + the whole cache, at the `--gbps` given or the
  bandwidth `bench.common.hbm_bandwidth` measures in the same run).

The raw traces stay in `--trace-dir` for the Perfetto UI.

Local smoke test (CPU: the host's own ops stand in for kernels):
    python -m bench.decode_profile --models tiny --batches 1 --prompt-len 8 --new-tokens 8
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from bench import common


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=common.csv(str), default=["qwen2_0p5b", "qwen2_1p5b"])
    p.add_argument("--batches", type=common.csv(int), default=[1, 64])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--top", type=int, default=15, help="kernel groups to list")
    p.add_argument("--gbps", type=float, default=0.0, help="0: measure (bench.common)")
    p.add_argument("--trace-dir", default="/tmp/decode_profile")
    p.add_argument("--out", default="decode_profile.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    from jaxrl.models.config import PRESETS
    from jaxrl.models.decoder import Decoder, init_params
    from jaxrl.rollout.decode import generate
    from jaxrl.rollout.sampling import SamplingParams

    info = common.run_info("decode_profile", list(argv if argv is not None else sys.argv[1:]))
    gbps = args.gbps or common.hbm_bandwidth(common.probe_gib(None))["gbps"]
    report = {**info, "gbps": gbps, "rows": []}
    for name in args.models:
        cfg = PRESETS[name].replace(dtype="bfloat16", param_dtype="bfloat16")
        params = init_params(cfg, jax.random.key(0))
        weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        model = Decoder(cfg)
        for b in args.batches:
            rng = np.random.default_rng(0)
            prompts = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, args.prompt_len)),
                                  jnp.int32)
            lengths, uids = jnp.full((b,), args.prompt_len, jnp.int32), jnp.arange(b)
            sampling = SamplingParams.make(b, temperature=1.0)
            run = lambda n: (lambda: generate(  # noqa: E731
                model, params, prompts, lengths, uids, jax.random.key(0), sampling,
                max_new_tokens=n))
            full = common.profile(run(args.new_tokens), os.path.join(args.trace_dir, f"{name}_{b}"))
            pre = common.profile(run(1), os.path.join(args.trace_dir, f"{name}_{b}_prefill"))
            steps = args.new_tokens - 1
            per = lambda k: (full[k] - pre[k]) / steps  # noqa: E731
            groups = []
            for g, (ms, calls) in full["groups"].items():
                ms0, calls0 = pre["groups"].get(g, (0.0, 0))
                groups.append({"kernel": g, "ms_per_step": (ms - ms0) / steps,
                               "calls_per_step": (calls - calls0) / steps})
            groups.sort(key=lambda r: -r["ms_per_step"])
            kv_bytes = (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * b
                        * (args.prompt_len + args.new_tokens))
            floor_ms = (weight_bytes + kv_bytes) / (gbps * 1e9) * 1e3
            row = {"model": name, "batch": b, "wall_ms_per_step": per("wall_ms"),
                   "busy_ms_per_step": per("busy_ms"), "kernels_per_step": per("kernels"),
                   "hbm_floor_ms": floor_ms, "top": groups[:args.top]}
            row["idle_ms_per_step"] = row["wall_ms_per_step"] - row["busy_ms_per_step"]
            report["rows"].append(row)
            common.write_json(args.out, report)
            print(f"\n{name} batch {b}: {row['wall_ms_per_step']:.3f} ms/step wall, "
                  f"{row['busy_ms_per_step']:.3f} busy, {row['idle_ms_per_step']:.3f} idle, "
                  f"{row['kernels_per_step']:.0f} kernels/step; HBM floor "
                  f"{floor_ms:.3f} ms ({floor_ms / row['wall_ms_per_step']:.0%} of the step)")
            print("| kernel | ms / step | calls / step |\n|---|---|---|")
            for g in groups[:args.top]:
                print(f"| {g['kernel'][:90]} | {g['ms_per_step']:.4f} | "
                      f"{g['calls_per_step']:.1f} |")


if __name__ == "__main__":
    main()
