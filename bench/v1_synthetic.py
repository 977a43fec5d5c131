"""V1-Infer against its baselines with synthetic judges of known noise (CPU, under 2 minutes).

    python bench/v1_synthetic.py --out v1_synth

The synthetic world and judges are `jaxrl.verify.synthetic` (read its docstring): latent
quality q ~ U(0, 1), a candidate is correct when q >= 1 - correct_rate; every reading of a
solution perceives q + sigma z. The pairwise judge rates the two solutions of a call
relative to each other (error rate e over random pairs, ties counting half, sets sigma);
the pointwise judge reads one solution with the same sigma and rates it on an
over-confident absolute scale (clip(round(10 - 4 (1 - s)), 1, 10): ties at 10 are the
norm). Wrong candidates share three wrong answers (0.4 / 0.35 / 0.25 of the wrong ones), so
at a correct rate of 0.3 the commonest wrong answer nearly ties the right one.

For each judge error rate and seed, one world of `--problems` problems is drawn with
enough candidates for the largest method; a method with N candidates uses the first N
(candidates are i.i.d., so that is an N-sample). Budgets are V = 1x, 2x, 3x N judge calls:

- swiss: V1-Infer (d_min 2, window 8, tau 0.1) on N candidates, V calls
- random pairing: random disjoint pairs, same scoring, V calls
- knockout: N - 1 matches of K = V // (N - 1) calls
- pointwise, V calls: N candidates each rated V / N times, best mean rating
- pointwise, total-matched: N' = (N + V) / 2 candidates, N' calls (N' + N' = N + V in
  all; at 3x this is the paper's pointwise N = 32 with 32 calls vs pairwise 16 with 48)
- majority, N + V samples: no judge, the same total count of model calls
- and, independent of V: Pass@1 (first candidate), majority@N, Best-of-Majority (alpha
  0.1, one pointwise call per kept candidate), oracle Pass@N.

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrl.verify import baselines, metrics, synthetic, tournament  # noqa: E402


def run_seed(error: float, seed: int, args) -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {budget label: (pick rate, total cost)}} for one world."""
    n, p = args.n, args.problems
    widest = n + max(args.budgets) * n
    world = synthetic.sample_world(p, widest, args.correct_rate, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1000)
    pair = lambda m: synthetic.NoisyPairJudge(world.quality_PN[:, :m], error, rng)  # noqa: E731
    point = lambda m: synthetic.NoisyPointJudge(world.quality_PN[:, :m], error, rng)  # noqa: E731

    def score(m: int, choice) -> tuple[float, float]:
        return (metrics.pick_rate(world.correct_PN[:, :m], choice.chosen_P)[0],
                metrics.total_calls(m, choice.calls_P))

    out: dict[str, dict[str, tuple[float, float]]] = {}
    for mult in args.budgets:
        v, col = mult * n, f"{mult}x"
        half = (n + v) // 2
        rows = {
            "swiss (V1-Infer)": score(n, tournament.swiss(pair(n), p, n, v, seed)),
            "random pairing": score(n, baselines.random_pairing(pair(n), p, n, v, seed)),
            "knockout": score(n, baselines.knockout(pair(n), p, n, v, seed)),
            "pointwise, V calls": score(n, baselines.pointwise(point(n), p, n, v, seed)),
            "pointwise, total-matched N'=(N+V)/2": score(
                half, baselines.pointwise(point(half), p, half, half, seed)),
            "majority, N+V samples": score(n + v, baselines.majority_vote(
                world.answers_PN[:, :n + v].tolist(), seed)),
        }
        for name, cell in rows.items():
            out.setdefault(name, {})[col] = cell
    fixed = {
        "Pass@1 (first candidate)": score(n, baselines.first_candidate(p)),
        "majority@N": score(n, baselines.majority_vote(world.answers_PN[:, :n].tolist(), seed)),
        "Best-of-Majority@N": score(n, baselines.best_of_majority(
            point(n), world.answers_PN[:, :n].tolist(), seed)),
        "oracle Pass@N": score(n, baselines.oracle(world.correct_PN[:, :n])),
    }
    for name, cell in fixed.items():
        out[name] = {f"{m}x": cell for m in args.budgets}
    pw = baselines.pointwise(point(n), p, n, n, seed)
    out["_pointwise tie rate @N"] = {f"{m}x": (metrics.tie_rate(pw.top_count_P), 0.0)
                                     for m in args.budgets}
    return out


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
          "[mean total cost: N generations + judge calls].\n`python bench/v1_synthetic.py "
          + " ".join(sys.argv[1:]) + f"` ({time.time() - start:.0f} s on CPU)\n\n"
          + "\n\n".join(sections) + "\n")
    print(md)
    out = pathlib.Path(args.out)
    (out / "v1_synthetic.md").write_text(md)
    (out / "v1_synthetic.json").write_text(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
