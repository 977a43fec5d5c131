"""The DAS table: rollout time of plain decoding, compacted plain decoding and DAS inside
the real training loop, and the training curves of the three on top of each other.

Three train runs per seed (configs/grpo.py, the same seed, so the same SFT and the same
data): `plain` (rollout.speculative=False), `compacted plain` (DAS's engine with no drafts:
widths (0,), finished rows compacted; what DAS gains over it is speculation's own share)
and `das` (the default DAS config). `rl.split_phases` times each step's rollout phase.
Every prompt of a 64-prompt pool is rolled out every step (a small dataset seen for many
epochs), so from the second RL step on each prompt has history to draft from. Runs are
timed one at a time, never in parallel.

The identity claim: DAS and compacted plain decoding give the same tokens as plain
decoding, and old log-probs are recomputed by the trainer (rl.old_logprobs), so the three
runs' metrics must be equal step for step; the table says whether they are, exactly.
"""
from __future__ import annotations

import pathlib

import numpy as np

from jaxrl.reproduce import report, runs

VARIANTS = {"plain": (("rollout.speculative", False),),
            "compacted plain": (("rollout.speculative", True), ("rollout.widths", (0,))),
            "das": (("rollout.speculative", True),)}

SETTINGS = {
    # One H200: the 0.8M `small` policy, float32 (the identity is exact there).
    "default": dict(task="sort", difficulty=1, model="small", sft_steps=400, rl_steps=30,
                    pool=64, generations=8, eval_problems=64, seeds=3,
                    overrides=()),
    # CI on a CPU: the pipeline and the files, not the numbers.
    "small": dict(task="sort", difficulty=0, model="tiny", sft_steps=4, rl_steps=3, pool=4,
                  generations=4, eval_problems=4, seeds=1,
                  # Fewer widths, no timed cost model, short rollouts, one-step solutions (one
                  # length bucket: one SFT program, not one per step), 4 x 4 rows (compacted
                  # buckets of 16 and 8 rows to compile, not also 32): a fraction of the time.
                  overrides=(("rollout.widths", (0, 4)), ("rollout.fit_cost_model", False),
                             ("rl.max_new_tokens", 24), ("task.max_steps", 1))),
}


def name(variant: str, seed: int) -> str:
    return f"das_{variant.replace(' ', '_')}_seed{seed}"


def plan(s: dict, seeds: list[int], out: pathlib.Path) -> list[runs.Run]:
    del out  # the runs read no other run's workdir
    config = (f"grpo.py:task={s['task']},difficulty={s['difficulty']},model={s['model']},"
              f"sft_steps={s['sft_steps']},rl_steps={s['rl_steps']}")
    common = (("task.train_pool", s["pool"]), ("rl.num_prompts", s["pool"]),
              ("rl.num_generations", s["generations"]), ("eval.every", runs.eval_every(s)),
              ("eval.num_problems", s["eval_problems"]), ("checkpoint.every", 10_000))
    # One flag per field, the variant's last (a tuple flag given twice would be joined).
    return [runs.Run(name(v, seed), config, tuple(
        {"seed": seed, **dict(common + s["overrides"] + VARIANTS[v])}.items()))
            for seed in seeds for v in VARIANTS]


def _rollout_s(rl: list[dict]) -> list[float]:
    """Rollout seconds of the RL steps that compiled nothing (a step that compiled is
    compile time, not decode time)."""
    return [r["time/rollout_s"] for r in rl if r["time/compile_s"] == 0]


def _same(a: list[dict], b: list[dict]) -> str:
    """Whether two runs' RL metrics are equal step for step (the timing fields aside)."""
    keys = sorted(k for k in a[0] if not k.startswith(("time/", "spec/")) and k not in (
        "step_time_s", "sampler_trainer_logprob_gap"))
    if len(a) != len(b):
        return f"different lengths {len(a)} vs {len(b)}"
    diff = max(abs(float(x[k]) - float(y[k])) for x, y in zip(a, b) for k in keys)
    return "identical" if diff == 0 else f"max abs difference {diff:.3g}"


def table(out: pathlib.Path, s: dict, seeds: list[int], argv: list[str], device: str,
          log=print) -> None:
    data = {(v, seed): runs.metrics(runs.workdir(out, name(v, seed)))
            for v in VARIANTS for seed in seeds}
    per_seed = {v: [np.mean(_rollout_s(data[v, seed][0]) or [np.nan]) for seed in seeds]
                for v in VARIANTS}
    lines = report.header("DAS: rollouts inside the training loop", argv, device) + [
        f"Task {s['task']} difficulty {s['difficulty']}, `{s['model']}` policy, "
        f"{s['sft_steps']} SFT steps then {s['rl_steps']} GRPO steps of {s['pool']} prompts "
        f"x {s['generations']} rollouts (every prompt every step), seeds {seeds}. Rollout "
        "seconds per RL step are the mean over the steps that compiled nothing; spreads are "
        "over seeds.", ""]
    rows = []
    for v in VARIANTS:
        rl = {seed: data[v, seed][0] for seed in seeds}
        speed = [p / t for p, t in zip(per_seed["plain"], per_seed[v])]
        speed_c = [c / t for c, t in zip(per_seed["compacted plain"], per_seed[v])]
        passes = [np.mean([r.get("spec/passes", r["response_length/max"] - 1) for r in rl[x]])
                  for x in seeds]
        # Accepted / drafted over the run; none where nothing was drafted (plain decoding).
        drafted = [sum(r.get("spec/drafted", 0) for r in rl[x]) for x in seeds]
        acceptance = [sum(r["spec/accepted"] for r in rl[x]) / d if d else None
                      for x, d in zip(seeds, drafted)]
        final = [data[v, seed][1][-1]["eval/accuracy"] for seed in seeds]
        same = "; ".join(sorted({_same(rl[x], data["plain", x][0]) for x in seeds}))
        rows.append([v, report.spread(per_seed[v]), report.spread(speed),
                     report.spread(speed_c), report.spread(passes), report.spread(acceptance),
                     report.spread(final), "-" if v == "plain" else same])
    lines += report.markdown_table(
        ["variant", "rollout s / RL step", "speedup vs plain", "vs compacted plain",
         "decode passes / step", "acceptance", "final held-out accuracy (greedy)",
         "RL metrics vs plain's, every step"], rows)
    lines += ["", "![training curves and rollout time](das.png)"]
    report.write(out, "das.md", lines, log)
    plot(data, seeds, out / "das.png")


def plot(data: dict, seeds: list[int], path: pathlib.Path) -> None:
    plt = report.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"plain": ("-", 4), "compacted plain": ("--", 2.5), "das": (":", 1.5)}
    for v, (style, width) in styles.items():
        rl = [data[v, seed][0] for seed in seeds]
        steps = [r["step"] for r in rl[0]]
        left.plot(steps, np.mean([[r["reward"] for r in x] for x in rl], 0), style,
                  linewidth=width, label=v)
        right.plot(steps, np.mean([[r["time/rollout_s"] for r in x] for x in rl], 0), style,
                   linewidth=width, label=v)
    left.set(xlabel="step", ylabel="mean reward (seeds' mean)",
             title="Training curves (identical runs overlap)")
    right.set(xlabel="step", ylabel="rollout seconds", title="Rollout phase per step",
              yscale="log")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
