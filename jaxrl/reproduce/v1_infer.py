"""The V1-Infer table: Pass@1 of V1-Infer (the Swiss tournament) and every baseline at
judge budgets 1x, 2x, 3x with N = 16 candidates (the paper's layout), each a mean over
seeds, for policies trained here with PairRL.

The runs are the PairRL table's `pairwise` runs (jaxrl/reproduce/pairrl.py: train with
configs/pairrl.py, evaluate with configs/v1_infer.py): with one OUT for both tables they are
made once.
"""
from __future__ import annotations

import pathlib

import numpy as np

from jaxrl.reproduce import pairrl, report, runs
from jaxrl.verify import methods

SETTINGS = pairrl.SETTINGS
VERIFIER = "pairwise"


def plan(s: dict, seeds: list[int], out: pathlib.Path) -> list[runs.Run]:
    return pairrl.plan(s, seeds, out, verifiers=(VERIFIER,))


def table(out: pathlib.Path, s: dict, seeds: list[int], argv: list[str], device: str,
          log=print) -> None:
    evals = [runs.v1_infer(runs.workdir(out, pairrl.eval_name(VERIFIER, x)))
             for x in seeds]
    n = s["candidates"]

    def cells(method: str, k) -> list[dict]:
        return [next(r for r in e["rows"] if r["method"] == method
                     and r["multiplier"] in (k, None)) for e in evals]

    lines = report.header("V1-Infer: pairwise self-verification at test time", argv, device) + [
        f"Policies: `{s['model']}` trained with PairRL (task {s['task']} difficulty "
        f"{s['difficulty']}, {s['sft_steps']} SFT + {s['rl_steps']} RL steps), seeds {seeds}. "
        f"{s['v1_problems']} held-out problems, N = {n} candidates each, judge budgets V = kN "
        "calls per problem. Cells: Pass@1 of the chosen candidate, mean +- std over seeds "
        "[total calls per problem: generations + judge calls]. Candidate accuracy (base "
        f"Pass@1): {report.spread([e['info']['candidate_accuracy'] for e in evals])}.", ""]
    rows = []
    for name in methods.METHODS:
        row = [name]
        for k in s["budgets"]:
            c = cells(name, k)
            calls = np.mean([r["total_calls_per_problem"] for r in c])
            row.append(f"{report.spread([r['pass_at_1'] for r in c])} [{calls:.0f}]")
        rows.append(row)
    lines += report.markdown_table(
        ["method"] + [f"{k}x (V={k * n})" for k in s["budgets"]], rows)
    swiss, point = methods.SWISS, "pointwise, V calls"
    gains = {k: [a["pass_at_1"] - b["pass_at_1"] for a, b in zip(cells(swiss, k),
                                                                   cells(point, k))]
             for k in s["budgets"]}
    lines += ["", "V1-Infer minus pointwise (same budget, same candidates): "
              + ", ".join(f"{k}x {report.spread(g)}" for k, g in gains.items()) + ".", "",
              "Each seed's own report: `runs/<run>/v1_infer.md`.", "",
              "![Pass@1 against total calls](v1_infer.png)"]
    report.write(out, "v1_infer.md", lines, log)
    plot(evals, s, out / "v1_infer.png")


def plot(evals: list[dict], s: dict, path: pathlib.Path) -> None:
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in methods.METHODS:
        mine = [[r for r in e["rows"] if r["method"] == name] for e in evals]
        x = np.mean([[r["total_calls_per_problem"] for r in m] for m in mine], 0)
        y = np.mean([[r["pass_at_1"] for r in m] for m in mine], 0)
        order = np.argsort(x)
        ax.plot(x[order], y[order], marker="o" if name in methods.BY_BUDGET else "s",
                linestyle="-" if name in methods.BY_BUDGET else "none", label=name)
    ax.set(xlabel="total calls per problem (N generations + V judge calls)",
           ylabel="Pass@1 (seeds' mean)", ylim=(-0.02, 1.02),
           title=f"V1-Infer, N = {s['candidates']}, PairRL-trained `{s['model']}`")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
