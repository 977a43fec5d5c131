"""Time to the first RL step of the training job, from a cold and then a warm compilation cache.

    python -m bench.compile_time --preset qwen2_0p5b --layers 24 --dtype bfloat16 --speculative
    python -m bench.compile_time --preset tiny --sft-steps 2 --num-prompts 2 --speculative  # CPU

Runs the job's pieces as `jaxrl.jobs.train` does (the config from configs/grpo.py, `train.build`
with the verification cost model fitted, SFT steps, then one GRPO step) in two fresh processes
that share one persistent cache directory: the first finds it empty (cold), the second finds
what the first compiled (warm). Prints, for each: seconds from the process start to the end of
the first RL step, and the compile seconds (trace / lower / backend, from jax.monitoring via
`jaxrl.compilation`) of the build, the SFT steps and the RL step, with the persistent-cache
hits; `--out` keeps them as JSON. As in the job, the RL step's program compiles on a
background thread from the end of the build (`compilation.Ahead`), so the SFT phase's
figures include what of it finished during SFT.
"""
from __future__ import annotations

import time

START = time.perf_counter()  # before the imports: they are part of a user's wait

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

from jaxrl import compilation, sharding  # noqa: E402
from jaxrl.config_utils import build, load_config_file  # noqa: E402
from jaxrl.jobs import train  # noqa: E402
from jaxrl.models import config as model_config  # noqa: E402

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "grpo.py")
PHASES = ("build", "sft", "rl")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2_0p5b")
    p.add_argument("--layers", type=int, default=0, help="override the preset's layer count")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="activations (config.model.dtype)")
    p.add_argument("--real-vocab", action="store_true",
                   help="the preset's vocabulary size (its real logits cost), not the tokenizer's")
    p.add_argument("--task", default="sort")
    p.add_argument("--difficulty", type=int, default=1)
    p.add_argument("--sft-steps", type=int, default=20, help="SFT steps before the RL step")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--speculative", action="store_true", help="DAS rollouts")
    p.add_argument("--scan-layers", action="store_true", help="config.model.scan_layers")
    p.add_argument("--remat", action="store_true", help="config.model.remat")
    p.add_argument("--no-ahead", action="store_true",
                   help="compile the RL step at its first call, not during SFT (the baseline)")
    p.add_argument("--cache-dir", default="",
                   help="the persistent cache the two runs share; '' = a fresh temporary one")
    p.add_argument("--out", default="", help="write the results here as JSON")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)  # run one process: 'cold'|'warm'
    return p.parse_args(argv)


def job_config(args, cache_dir: str) -> train.TrainConfig:
    c = load_config_file(CONFIG_FILE, f"task={args.task},difficulty={args.difficulty},"
                         f"model={args.preset},sft_steps={args.sft_steps},rl_steps=1,"
                         f"speculative={args.speculative}")
    c.model.dtype = args.dtype  # activations; params stay in the config's dtype, as in the job
    c.model.scan_layers = args.scan_layers
    c.model.remat = args.remat
    c.model.vocab_size = model_config.PRESETS[args.preset].vocab_size if args.real_vocab else 0
    c.rl.num_prompts, c.rl.num_generations = args.num_prompts, args.num_generations
    c.compile.cache_dir = cache_dir
    return build(train.TrainConfig, c)


def child(args) -> dict:
    """One process: build, the SFT steps and one RL step; the compile seconds of each."""
    if args.layers:  # a deeper (or shallower) preset under the same name, in this process only
        model_config.PRESETS[args.preset] = dataclasses.replace(
            model_config.PRESETS[args.preset], num_layers=args.layers)
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **_: hits.append(1) if event == compilation.CACHE_HIT_EVENT else None)
    cfg = job_config(args, args.cache_dir)
    compilation.set_up_cache(cfg.compile)
    report = {"run": args.child, "device": jax.devices()[0].device_kind,
              "imports_s": time.perf_counter() - START, "phases": {}}

    def phase(name, fn):
        t0, c0, h0 = time.perf_counter(), compilation.seconds_by_stage(), len(hits)
        out = fn()
        c1 = compilation.seconds_by_stage()
        report["phases"][name] = {"s": time.perf_counter() - t0, "cache_hits": len(hits) - h0,
                                  **{f"{k}_s": c1[k] - c0[k] for k in c1}}
        # On stderr as each phase ends, so that a run killed by a time limit still says how
        # far it got (the parent passes the child's stderr through).
        print(f"[{args.child}] {name} done at {time.perf_counter() - START:.1f} s: "
              f"{report['phases'][name]}", file=sys.stderr, flush=True)
        return out

    with tempfile.TemporaryDirectory() as workdir:  # the fitted cost model goes here
        built = phase("build", lambda: train.build(cfg, sharding.make_mesh(cfg.mesh), workdir))
        state = built.state

        def run_steps(kind, steps):
            nonlocal state
            for s in steps:
                batch = (built.source.sft_batch(s, cfg.sft.batch_size) if kind == "sft"
                         else built.source.rl_batch(s, cfg.rl.num_prompts))
                state, m = built.steps[kind](state, *batch)
                jax.device_get(m)

        # As the job does: the first RL step's program compiles on a background thread
        # while SFT trains (its seconds count in the phase during which each stage ended).
        ahead = compilation.Ahead()
        if not args.no_ahead:
            ahead.start("rl", built.steps["rl"].lower, state,
                        *built.source.rl_batch(cfg.sft.steps, cfg.rl.num_prompts))
        phase("sft", lambda: run_steps("sft", range(cfg.sft.steps)))
        phase("rl", lambda: (ahead.wait("rl"), run_steps("rl", [cfg.sft.steps])))
        report["rl_ahead_compile_s"] = ahead.seconds
        report["first_rl_step_s"] = time.perf_counter() - START
    return report


def main(argv=None):
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or os.path.join(tmp, "xla")
        if os.path.isdir(cache_dir) and os.listdir(cache_dir):
            print(f"warning: {cache_dir} is not empty: the first run is not cold", flush=True)
        rest = list(argv if argv is not None else sys.argv[1:])
        runs = []
        for name in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-m", "bench.compile_time", *rest,
                                   "--cache-dir", cache_dir, "--child", name],
                                  stdout=subprocess.PIPE, text=True)  # stderr: passed through
            if proc.returncode:
                sys.exit(f"the {name} run failed (its stderr is above)")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{runs[0]['device']}: python -m bench.compile_time {' '.join(rest)}")
    print("| run | to first RL step (s) | imports (s) | "
          + " | ".join(f"{p}: wall / compile (trace+lower+backend) s, cache hits" for p in PHASES)
          + " |")
    for r in runs:
        cells = []
        for p in PHASES:
            ph = r["phases"][p]
            cells.append(f"{ph['s']:.1f} / {ph['trace_s'] + ph['lower_s'] + ph['backend_s']:.1f} "
                         f"({ph['trace_s']:.1f}+{ph['lower_s']:.1f}+{ph['backend_s']:.1f}), "
                         f"{ph['cache_hits']}")
        print(f"| {r['run']} | {r['first_rl_step_s']:.1f} | {r['imports_s']:.1f} | "
              + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python -m bench.compile_time " + " ".join(rest),
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
