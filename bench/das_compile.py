"""What the DAS rollout program's compile time scales with: `speculative.generate` traced,
lowered and compiled alone for variants of one config (widths, buckets, compaction).

    python -m bench.das_compile                                  # the 0.8M policy's shapes
    python -m bench.das_compile --preset tiny --batch 8 --group 4 --new-tokens 16   # smoke
    python -m bench.das_compile --preset qwen2_0p5b --layers 2 --dtype bfloat16  # per layer

Shapes are the main job's sort task's by default: 64 prompts x 8 rollouts, prompt 48, 433
new tokens, widths (0, 4, 8, 16), buckets down to 8 rows, the H200's cost model for the
0.8M policy. Random weights and inputs: the program, not the numbers, is what is compiled.
Nothing is cached (no persistent compilation cache is set), so each figure is a cold
compile.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp

from bench import common


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--layers", type=int, default=0, help="layers of the preset; 0 = its own")
    p.add_argument("--vocab", type=int, default=128,
                   help="vocabulary (the embedded tasks' 128 by default; 0 = the preset's)")
    p.add_argument("--dtype", default="float32", help="activations and params")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=433)
    p.add_argument("--variants", type=common.csv(str),
                   default=["das", "compacted", "widths_0_16", "min_bucket_64", "no_compaction"])
    p.add_argument("--trace-dir", default="",
                   help="trace each compile under jax.profiler here and report XLA's top "
                        "host spans (passes, autotuning, codegen); '' = no trace")
    p.add_argument("--top", type=int, default=25, help="host spans reported per variant")
    p.add_argument("--scan-layers", type=int, default=0,
                   help="1: the Decoder scans its layers (models/decoder.py)")
    p.add_argument("--out", default="das_compile.json")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    from jaxrl.config_utils import build, load_config_file
    from jaxrl.models.config import preset
    from jaxrl.models.decoder import Decoder, init_params
    from jaxrl.rollout import drafter, speculative
    from jaxrl.rollout.das import RolloutConfig
    from jaxrl.rollout.sampling import SamplingParams

    base = build(RolloutConfig, load_config_file(str(common.GRPO_CONFIG)).rollout,
                 "config.rollout").replace(
        widths=(0, 4, 8, 16), min_bucket=8, speculative=True,
        # The H200's fit for this policy (BENCHMARKS.md, 2026-12-02): the costs decide
        # which buckets draft and which skip the width choice, so they shape the program.
        cost_base=1.84e-4, cost_per_token=7.7e-8, draft_cost=1.16e-4, draft_cost_per_row=7.7e-7)
    table = {"das": base, "compacted": base.replace(widths=(0,)),
             "widths_0_16": base.replace(widths=(0, 16)),
             "min_bucket_64": base.replace(min_bucket=64),
             "no_compaction": base.replace(compaction=False)}
    sizes = {k: v for k, v in (("num_layers", args.layers), ("vocab_size", args.vocab)) if v}
    cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.dtype, **sizes)
    model = Decoder(cfg, scan_layers=bool(args.scan_layers))
    params = init_params(cfg, jax.random.key(0))
    b, g, n, l = args.batch, args.group, args.new_tokens, args.prompt_len
    inputs = (jnp.zeros((b, l), jnp.int32), jnp.full((b,), l, jnp.int32), jnp.arange(b),
              jax.random.key(1), SamplingParams.make(b, temperature=1.0),
              jnp.full((b // g, base.window * g, n), drafter.SEP, jnp.int32),
              jnp.ones((b // g,), jnp.int32))
    report = {**common.run_info("das_compile", argv), "rows": []}
    for name in args.variants:
        if name not in table:
            raise SystemExit(f"--variants: unknown {name!r}; valid: {sorted(table)}")
        t0 = time.perf_counter()
        lowered = speculative.generate.lower(model, params, *inputs, spec=table[name],
                                             max_new_tokens=n, stop_tokens=(5,), group=g)
        t1 = time.perf_counter()
        trace_dir = os.path.join(args.trace_dir, name) if args.trace_dir else ""
        with (jax.profiler.trace(trace_dir, create_perfetto_trace=True) if trace_dir
              else contextlib.nullcontext()):
            lowered.compile()
        t2 = time.perf_counter()
        row = {"variant": name, "lower_s": t1 - t0, "compile_s": t2 - t1}
        print(f"{name}: trace + lower {row['lower_s']:.1f} s, backend compile "
              f"{row['compile_s']:.1f} s", flush=True)
        if trace_dir:  # the traced compile is slower than an untraced one, a little
            row["host_spans"] = common.host_spans(trace_dir, args.top)
            for span, total, count, threads in row["host_spans"]:
                print(f"  {total:8.2f} s {count:6d}x {threads:3d} threads  {span}", flush=True)
        report["rows"].append(row)
        common.write_json(args.out, report)


if __name__ == "__main__":
    main()
