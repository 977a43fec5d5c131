"""Padding waste and compiled shapes of SFT length buckets on the embedded tasks (CPU, no model).

    python -m bench.sft_padding --steps 2000 --batch 64

For each task and difficulty, the SFT batches of steps 0 .. steps-1 (seed 0, as the training
job draws them) are padded to their longest solution (plus EOS) rounded up by each rule;
waste = padded solution slots / all solution slots, shapes = distinct padded lengths (one
compile each). `jaxrl.tasks.batches.bucket_ladder` is the rule the job uses.

2026-12-01, CPU, `--steps 2000 --batch 64` (waste, shapes):

| task | budget | mean / max solution | multiple of 16 | x1.25 (bucket_ladder) | powers of two | task budget |
|---|---|---|---|---|---|---|
| arithmetic 0 | 126 | 17 / 92 | 76%, 5 | 77%, 5 | 82%, 3 | 86%, 1 |
| arithmetic 1 | 344 | 39 / 216 | 76%, 10 | 78%, 5 | 83%, 2 | 89%, 1 |
| arithmetic 2 | 585 | 70 / 411 | 78%, 18 | 80%, 6 | 86%, 3 | 88%, 1 |
| arithmetic 3 | 874 | 121 / 607 | 76%, 22 | 79%, 4 | 82%, 2 | 86%, 1 |
| countdown 0 | 49 | 13 / 46 | 72%, 2 | 72%, 2 | 72%, 2 | 74%, 1 |
| countdown 1 | 101 | 25 / 82 | 66%, 4 | 66%, 4 | 70%, 2 | 75%, 1 |
| countdown 2 | 149 | 46 / 135 | 62%, 5 | 66%, 3 | 64%, 2 | 69%, 1 |
| countdown 3 | 246 | 76 / 212 | 60%, 7 | 62%, 3 | 69%, 2 | 69%, 1 |
| sort 0 | 129 | 11 / 129 | 87%, 9 | 88%, 6 | 89%, 5 | 92%, 1 |
| sort 1 | 433 | 40 / 433 | 86%, 24 | 88%, 7 | 89%, 3 | 91%, 1 |
| sort 2 | 1025 | 110 / 1025 | 85%, 51 | 87%, 7 | 89%, 4 | 89%, 1 |
| sort 3 | 1601 | 195 / 1601 | 84%, 69 | 86%, 6 | 87%, 3 | 88%, 1 |
"""
from __future__ import annotations

import argparse

import numpy as np

from jaxrl.tasks import batches
from jaxrl.tasks.registry import TASKS, get_task


def rules(cap: int) -> dict[str, list[int]]:
    return {"multiple of 16": list(range(16, cap, 16)) + [cap],
            "x1.25 (bucket_ladder)": batches.bucket_ladder(cap),
            "powers of two": [2 ** i for i in range(4, cap.bit_length()) if 2 ** i < cap] + [cap],
            "task budget": [cap]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    print("| task | budget | mean / max solution | "
          + " | ".join(rules(64)) + " |  (waste, shapes)")
    for name in sorted(TASKS):
        for difficulty in range(len(TASKS[name].LEVELS)):
            task = get_task(name, difficulty)
            cap = batches.budgets(task)[1]
            lengths_SP = np.asarray([[len(p.solution) + 1 for p in batches.train_problems(
                task, 0, s, args.batch)] for s in range(args.steps)])
            cells = []
            for ladder in rules(cap).values():
                padded_S = np.asarray(ladder)[np.searchsorted(ladder, lengths_SP.max(1))]
                waste = 1 - lengths_SP.sum() / (args.batch * padded_S.sum())
                cells.append(f"{100 * waste:.0f}%, {len(set(padded_S.tolist()))}")
            print(f"| {name} {difficulty} | {cap} | {lengths_SP.mean():.0f} / "
                  f"{lengths_SP.max()} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
