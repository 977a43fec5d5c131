"""Wall time of the DAS cost-model fit at the start of a cold run (`speculative.
measure_cost_model`: 4 verification loops and 4 whole-pass loops, each a program), with its
compiles run at once (the default: a pool thread per loop) and one at a time.

    python -m bench.cost_model_fit                       # the 0.8M policy's shapes
    python -m bench.cost_model_fit --preset tiny --batch 8 --group 4 --new-tokens 16  # smoke

Each setting runs in a child process of its own, so that neither reads the other's
compiles (no persistent compilation cache is set). Shapes are the main job's by default: 64
prompts x 8 rollouts, prompt 48, 433 new tokens, widths (0, 4, 8, 16), vocabulary 64.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench import common


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=433)
    p.add_argument("--workers", type=common.csv(int), default=[0, 1],
                   help="compile threads per setting; 0 = the default pool")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="cost_model_fit.json")
    return p.parse_args(argv)


def fit(args) -> dict:
    """One fit in this process with `args.child` compile threads (0: the default pool)."""
    import concurrent.futures

    from jaxrl import sharding
    from jaxrl.config_utils import build, load_config_file
    from jaxrl.models.config import preset
    from jaxrl.models.decoder import Decoder
    from jaxrl.rollout import policy, speculative
    from jaxrl.rollout.das import RolloutConfig

    if args.child:
        policy._COMPILES = concurrent.futures.ThreadPoolExecutor(args.child)
    grpo = load_config_file(str(common.GRPO_CONFIG))
    layout = sharding.make_layout({"data": -1}, build(sharding.ShardingConfig, grpo.sharding))
    spec = build(RolloutConfig, grpo.rollout, "config.rollout").replace(widths=(0, 4, 8, 16))
    model = Decoder(preset(args.preset, vocab_size=args.vocab, dtype="float32",
                           param_dtype="float32"))
    t0 = time.perf_counter()
    c_base, c_tok, draft = speculative.measure_cost_model(
        model, layout, args.batch, spec.widths, "reference",
        (spec, args.group, args.prompt_len, args.new_tokens))
    return {"workers": args.child, "seconds": time.perf_counter() - t0, "c_base_s": c_base,
            "c_tok_s": c_tok, "draft_s": draft[0], "draft_per_row_s": draft[1]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.child is not None:
        print("FIT " + json.dumps(fit(args)), flush=True)
        return
    report = {**common.run_info("cost_model_fit", argv), "rows": []}
    for workers in args.workers:
        shape = ("preset", "vocab", "batch", "group", "prompt_len", "new_tokens")
        child = [x for k in shape for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        out = subprocess.run([sys.executable, "-m", "bench.cost_model_fit", *child,
                              "--child", str(workers)], capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("FIT ")]
        if out.returncode or not lines:
            raise SystemExit(f"workers={workers}: the child failed:\n{out.stderr[-3000:]}")
        row = json.loads(lines[-1][4:])
        report["rows"].append(row)
        common.write_json(args.out, report)
        print(f"compile threads {workers or 'default'}: fit in {row['seconds']:.1f} s "
              f"(c_base {1e3 * row['c_base_s']:.3f} ms, c_tok {1e6 * row['c_tok_s']:.3f} us, "
              f"drafting {1e3 * row['draft_s']:.3f} ms + {1e6 * row['draft_per_row_s']:.3f} "
              "us/row)", flush=True)


if __name__ == "__main__":
    main()
