"""V1-Infer against its baselines with synthetic judges of known noise (CPU, under 2 minutes).

    python -m bench.v1_synthetic --out v1_synth

The synthetic world and judges are `jaxrl.verify.synthetic` (read its docstring): latent
quality q ~ U(0, 1), a candidate is correct when q >= 1 - correct_rate; every reading of a
solution perceives q + sigma z. The pairwise judge rates the two solutions of a call
relative to each other (error rate e over random pairs, ties counting half, sets sigma);
the pointwise judge reads one solution with the same sigma and rates it on an
over-confident absolute scale (clip(round(10 - 4 (1 - s)), 1, 10): ties at 10 are the
norm). Wrong candidates share three wrong answers (0.4 / 0.35 / 0.25 of the wrong ones), so
at a correct rate of 0.3 the commonest wrong answer nearly ties the right one.

For each judge error rate and seed, one world of `--problems` problems is drawn with
enough candidates for the largest method, and every method of `jaxrl.verify.methods` (the
roster the v1_infer job reports; its docstring lists them) runs at budgets V = 1x, 2x, 3x
N judge calls: Swiss with the paper's d_min 2, window 8, tau 0.1; Best-of-Majority with
alpha 0.1.

Cells are the pick rate (fraction of problems whose chosen candidate is correct), mean
+- standard deviation over seeds, with the mean total cost (generations + judge calls) in
brackets. Writes `v1_synthetic.md` and `v1_synthetic.json` to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

from jaxrl.verify import methods, metrics, synthetic


def run_seed(error: float, seed: int, args) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {budget label: (pick rate, total cost)}} for one world."""
    n, p = args.n, args.problems
    world = synthetic.sample_world(p, methods.widest(n, args.budgets), args.correct_rate,
                                   np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1000)
    outcomes = methods.run_all(
        lambda m: synthetic.NoisyPairJudge(world.quality_PN[:, :m], error, rng),
        lambda m: synthetic.NoisyPointJudge(world.quality_PN[:, :m], error, rng),
        world.answers_PN.tolist(), world.correct_PN, n, args.budgets, seed,
        d_min=2, window=8, tau=0.1, alpha=0.1)  # the paper's tournament; BoM's alpha
    out: dict[str, dict[str, tuple[float, float]]] = {}
    ties = {}  # the last row: pointwise best-of-N ties, broken at random
    for o in outcomes:
        cell = (metrics.pick_rate(world.correct_PN[:, :o.num_candidates], o.choice.chosen_P)[0],
                metrics.total_calls(o.num_candidates, o.choice.calls_P))
        for k in [o.multiplier] if o.multiplier else args.budgets:
            out.setdefault(o.method, {})[f"{k}x"] = cell
        if o.method == "pointwise, V calls":
            ties[f"{o.multiplier}x"] = (metrics.tie_rate(o.choice.top_count_P), 0.0)
    return {**out, "_pointwise tie rate, V calls": ties}


def table(error: float, per_seed: list[dict], args) -> str:
    cols = [f"{m}x" for m in args.budgets]
    head = " | ".join(f"{c} (V={int(c[:-1]) * args.n})" for c in cols)
    lines = [f"Judge error rate e = {error} (reading noise sigma = "
             f"{synthetic.sigma_for_error(error):.3f}), N = {args.n}, "
             f"{args.problems} problems x {len(per_seed)} seeds, correct rate "
             f"{args.correct_rate}.", "", f"| method | {head} |",
             "|---" * (len(cols) + 1) + "|"]
    for name in per_seed[0]:
        cells = []
        for c in cols:
            picks = np.array([s[name][c][0] for s in per_seed])
            cost = np.mean([s[name][c][1] for s in per_seed])
            cells.append(f"{picks.mean():.3f} +- {picks.std():.3f}" +
                         ("" if name.startswith("_") else f" [{cost:.0f}]"))
        lines.append(f"| {name.lstrip('_')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for v1_synthetic.{md,json}")
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=16, help="candidates per problem")
    ap.add_argument("--errors", type=float, nargs="+", default=[0.2, 0.35])
    ap.add_argument("--correct-rate", type=float, default=0.3)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 3],
                    help="judge budgets as multiples of N")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    results, sections = {}, []
    for error in args.errors:
        per_seed = [run_seed(error, seed, args) for seed in range(args.seeds)]
        results[str(error)] = per_seed
        sections.append(table(error, per_seed, args))
    md = ("# V1-Infer with synthetic judges\n\nPick rate (mean +- sd over seeds) "
          "[mean total cost: N generations + judge calls].\n`python -m bench.v1_synthetic "
          + " ".join(sys.argv[1:]) + f"` ({time.time() - start:.0f} s on CPU)\n\n"
          + "\n\n".join(sections) + "\n")
    print(md)
    out = pathlib.Path(args.out)
    (out / "v1_synthetic.md").write_text(md)
    (out / "v1_synthetic.json").write_text(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
