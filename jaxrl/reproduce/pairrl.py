"""The PairRL table: standard RL vs PointRL vs PairRL at equal generator steps, each
policy's base Pass@1 and its Pass@1 with V1-Infer at N = 16.

Per seed, three train runs of configs/pairrl.py (`verifier=none|pointwise|pairwise`: one
recipe, one switch) from the same SFT warm-up (the seed fixes it; every 4th SFT step teaches
the judge's reply format with random ratings, so every variant starts as a random judge),
then one v1_infer run on each trained policy (configs/v1_infer.py with `policy_workdir`):
the base Pass@1 is the accuracy of all its sampled candidates, V1-Infer's the Swiss
tournament's pick. The v1_infer table is the PairRL runs' evaluations (jaxrl/reproduce/
v1_infer.py): the same runs, shared when both tables write to one OUT.

Countdown and sort answers are checkable step by step, a random judge picks a correct
candidate at the base rate (a coin per pair), and their judge prompts fit the small
policy's positions.
"""
from __future__ import annotations

import pathlib

import numpy as np

from jaxrl.reproduce import report, runs

VERIFIERS = {"none": "standard RL", "pointwise": "PointRL", "pairwise": "PairRL"}
# The training judge's accuracy: pairwise, on correct-incorrect pairs (the correct one
# rated strictly higher; unparsed = wrong); pointwise, the rating on the verdict's side.
JUDGE_ACCURACY = {"pairwise": "verifier/accuracy_ci", "pointwise": "verifier/accuracy"}
SWISS = "swiss (V1-Infer)"
POINTWISE = "pointwise, V calls"

SETTINGS = {
    # One H200: the 0.8M `small` policy on easy Countdown, which it solves about half the
    # time after this SFT (the CPU main job: 0.48 sampled after 200 SFT steps), so groups
    # hold both correct and incorrect solutions; all 9 runs share the GPU (`parallel`).
    "default": dict(task="countdown", difficulty=0, model="small", sft_steps=400, rl_steps=200,
                    prompts=64, eval_problems=64, v1_problems=64, candidates=16,
                    budgets=(1, 2, 3), judge_rows=512, seeds=3, parallel=9, v1_small=False,
                    generations=4, judge_generations=4, pair_slots=4, overrides=()),
    # The default's policy after 20 RL steps instead of 200, at the paper's split of 8 + 8
    # rollouts: the groups still hold both verdicts (with 8 rollouts, `groups_with_signal`
    # 0.53 at the first RL step and 0.1 by the 20th on a CPU run of `verifier=none`), where
    # the default's 200 steps leave a near-deterministic policy (REPRODUCE.md).
    "short_rl": dict(task="countdown", difficulty=0, model="small", sft_steps=400, rl_steps=20,
                     prompts=64, eval_problems=64, v1_problems=64, candidates=16,
                     budgets=(1, 2, 3), judge_rows=512, seeds=3, parallel=9, v1_small=False,
                     generations=8, judge_generations=8, pair_slots=8, overrides=()),
    # CI on a CPU: the pipeline and the files, not the numbers.
    "small": dict(task="sort", difficulty=0, model="tiny", sft_steps=4, rl_steps=2, prompts=4,
                  eval_problems=4, v1_problems=4, candidates=4, budgets=(1, 2), judge_rows=32,
                  seeds=1, parallel=1, v1_small=True, generations=4, judge_generations=4,
                  pair_slots=4,
                  # Short rollouts (short judge prompts, a cheap update) and one-step
                  # solutions (one length bucket: one SFT program, not one per step).
                  overrides=(("rl.max_new_tokens", 24), ("task.max_steps", 1))),
}


def train_name(verifier: str, seed: int) -> str:
    return f"pairrl_{verifier}_seed{seed}"


def eval_name(verifier: str, seed: int) -> str:
    return f"{train_name(verifier, seed)}_v1_infer"


def plan(s: dict, seeds: list[int], out: pathlib.Path, verifiers=tuple(VERIFIERS)) -> list[runs.Run]:
    """Train and evaluate each verifier at each seed."""
    task = f"task={s['task']},difficulty={s['difficulty']},model={s['model']}"
    plan = []
    for seed in seeds:
        for v in verifiers:
            train = runs.Run(train_name(v, seed), (
                f"pairrl.py:{task},sft_steps={s['sft_steps']},rl_steps={s['rl_steps']},"
                f"verifier={v}"), (("seed", seed), ("rl.num_prompts", s["prompts"]),
                                   ("eval.num_problems", s["eval_problems"]),
                                   ("eval.every", runs.eval_every(s)),
                                   ("checkpoint.every", 50),
                                   ("rl.num_generations", s["generations"]),
                                   ("pairrl.judge_generations", s["judge_generations"]),
                                   ("pairrl.pair_slots", s["pair_slots"])) + s["overrides"])
            plan.append(train)
            plan.append(runs.Run(eval_name(v, seed), (
                f"v1_infer.py:{task},small={s['v1_small']}"), (
                    ("seed", seed), ("policy_workdir", train.workdir(out)),
                    ("num_problems", s["v1_problems"]), ("num_candidates", s["candidates"]),
                    ("budgets", tuple(s["budgets"])), ("judge.max_rows", s["judge_rows"])),
                after=(train.name,)))
    return plan


def pass_at(result: dict, method: str, multiplier) -> float:
    return next(r["pass_at_1"] for r in result["rows"]
                if r["method"] == method and r["multiplier"] == multiplier)


def table(out: pathlib.Path, s: dict, seeds: list[int], argv: list[str], device: str,
          log=print) -> None:
    top = max(s["budgets"])
    train = {(v, x): runs.metrics(runs.workdir(out, train_name(v, x)))
             for v in VERIFIERS for x in seeds}
    evals = {(v, x): runs.v1_infer(runs.workdir(out, eval_name(v, x)))
             for v in VERIFIERS for x in seeds}
    lines = report.header("V1-PairRL: standard RL vs PointRL vs PairRL", argv, device) + [
        f"Task {s['task']} difficulty {s['difficulty']}, `{s['model']}` policy, "
        f"{s['sft_steps']} SFT steps then {s['rl_steps']} RL steps of {s['prompts']} prompts "
        f"x {s['generations']} generator rollouts (+ {s['judge_generations']} judge rollouts "
        f"of {s['pair_slots']} pairs for PointRL / PairRL), seeds {seeds}; "
        f"evaluated on {s['v1_problems']} held-out problems with N = {s['candidates']} "
        "candidates per problem. Base Pass@1: the fraction of all sampled candidates that "
        "are correct. Judge accuracy, over the last quarter of RL steps: PairRL's on "
        "correct-incorrect pairs (the correct one rated strictly higher; a judge of uniform "
        "random ratings scores 0.45), PointRL's the rating on the verdict's side of 5.5. Spreads are over seeds.", ""]
    rows = []
    for v, label in VERIFIERS.items():
        base = [evals[v, x]["info"]["candidate_accuracy"] for x in seeds]
        swiss = {k: [pass_at(evals[v, x], SWISS, k) for x in seeds] for k in s["budgets"]}
        point = [pass_at(evals[v, x], POINTWISE, top) for x in seeds]
        quarter = max(s["rl_steps"] // 4, 1)
        judge = ([np.mean([r[JUDGE_ACCURACY[v]] for r in train[v, x][0][-quarter:]])
                  for x in seeds] if v != "none" else [None])
        parse = ([np.mean([r["verifier/parse_rate"] for r in train[v, x][0][-quarter:]])
                  for x in seeds] if v != "none" else [None])
        gain = [w - b for w, b in zip(swiss[top], base)]
        rows.append([label, report.spread(base)]
                    + [report.spread(swiss[k]) for k in s["budgets"]]
                    + [report.spread(gain), report.spread(point), report.spread(judge),
                       report.spread(parse)])
    lines += report.markdown_table(
        ["policy", "base Pass@1"] + [f"V1-Infer {k}x" for k in s["budgets"]]
        + [f"V1-Infer {top}x - base", f"pointwise {top}x", "judge accuracy (training)",
           "rating parse rate (training)"], rows)
    lines += ["", "![training curves](pairrl.png)"]
    report.write(out, "pairrl.md", lines, log)
    plot(train, seeds, out / "pairrl.png")


def plot(train: dict, seeds: list[int], path: pathlib.Path) -> None:
    plt = report.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for v, label in VERIFIERS.items():
        rl = [train[v, x][0] for x in seeds]
        steps = [r["step"] for r in rl[0]]
        left.plot(steps, np.mean([[r["reward"] for r in x] for x in rl], 0), label=label)
        if v != "none":
            right.plot(steps, np.mean([[r[JUDGE_ACCURACY[v]] for r in x] for x in rl], 0),
                       label=label)
    right.axhline(0.5, color="gray", linestyle=":", label="0.5")
    left.set(xlabel="step", ylabel="generator reward (seeds' mean)", title="Generator")
    right.set(xlabel="step", ylabel="judge accuracy (see the table)",
              title="Judge (training rollouts)", ylim=(-0.02, 1.02))
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
