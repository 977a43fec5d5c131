"""Reproduce a paper table at a scale that runs here, from one command:

    python -m jaxrl.reproduce das --out=/tmp/repro          # DAS: rollout time, curves
    python -m jaxrl.reproduce v1_infer --out=/tmp/repro     # V1-Infer vs every baseline
    python -m jaxrl.reproduce pairrl --out=/tmp/repro       # RL vs PointRL vs PairRL
    python -m jaxrl.reproduce pairrl --out=/tmp/ci --small  # CI: a CPU, minutes

Each table runs its jobs (`python -m jaxrl.main`, one workdir each under DIR/runs; see
jaxrl/reproduce/runs.py: finished runs are skipped, interrupted ones resume) and writes
DIR/TABLE.md and DIR/TABLE.png. The default setting is sized for one GPU (REPRODUCE.md
gives the measured times); `--small` is CI's, which checks the pipeline and the files, not
the numbers. The v1_infer table's runs are the pairrl table's PairRL runs: give both the
same DIR to make them once.
"""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import time

from jaxrl.reproduce import das, pairrl, runs, v1_infer

TABLES = {"das": das, "v1_infer": v1_infer, "pairrl": pairrl}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxrl.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--out", required=True, help="where the runs, the table and plot go")
    p.add_argument("--small", action="store_true", help="CI's setting: a CPU in minutes")
    p.add_argument("--setting", default="",
                   help="a named setting of the table's SETTINGS (jaxrl/reproduce/TABLE.py); "
                        "'' = default, or small with --small")
    p.add_argument("--seeds", type=int, default=0, help="0 = the setting's (3 by default)")
    p.add_argument("--parallel", type=int, default=0,
                   help="runs at once on the one device; 0 = the setting's (das: always 1, "
                        "its timings must not share the device)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    # SIGTERM (a scheduler, `timeout`) stops the runs as Ctrl-C does: each saves and exits.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.seeds < 0 or args.parallel < 0:
        raise SystemExit(f"--seeds={args.seeds} --parallel={args.parallel}: need >= 0")
    table = TABLES[args.table]
    name = args.setting or ("small" if args.small else "default")
    if name not in table.SETTINGS or (args.small and name != "small"):
        raise SystemExit(f"--setting={args.setting!r} (--small={args.small}): {args.table}'s "
                         f"settings are {sorted(table.SETTINGS)}; --small means 'small'")
    s = table.SETTINGS[name]
    seeds = list(range(args.seeds or s["seeds"]))
    parallel = 1 if table is das else (args.parallel or s["parallel"])
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = table.plan(s, seeds, out)
    t0 = time.perf_counter()
    print(f"{args.table}: {len(plan)} runs in {out / 'runs'}, {parallel} at a time", flush=True)
    runs.execute(plan, out, parallel, log=lambda m: print(m, flush=True))
    table.table(out, s, seeds, argv, runs.device_kind())
    print(f"{args.table}: {out / (args.table + '.md')} and .png written in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
