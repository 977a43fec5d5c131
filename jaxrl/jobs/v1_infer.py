"""The v1_infer job: V1-Infer (pairwise self-verification, arXiv 2603.04304) and every
baseline at the same budgets, on held-out problems, with one model as generator and judge.

1. The policy: `config.model` (an HF checkpoint, or random weights of a preset), or with
   `config.policy_workdir` the params of the newest checkpoint of a `train` run there.
2. The problems: the source's held-out problems (`jaxrl/tasks/prompts.py`): an embedded
   task (checked by `task.check`, answers by the `#<answer>` line) or the first rows of
   test.jsonl (checked by the JSONL math reward, math-verify; answers by the last
   `\\boxed{}`).
3. Candidates: `methods.widest(N, budgets)` samples per problem in one batched `generate`
   call, params and rows placed on the mesh as in training.
4. Every method of `jaxrl.verify.methods` picks one candidate per problem; the judge calls
   go through `ModelJudge` on the same model (each judging round is one batched call).
5. `workdir/v1_infer.md` (the tables), `v1_infer.json` (every number) and `v1_infer.png`
   (Pass@1 against total calls per problem: generations + judge calls).

The workdir policy is restored onto the train state that `jobs.train.build` makes from the
train config saved in the checkpoint's metadata, so any state layout that training writes
restores; only its params are used. That run's data (JSONL manual_dir) must still exist.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import time

import jax
import numpy as np

from jaxrl import checkpoint, compilation, resume, sharding
from jaxrl.config_utils import (at_least, build, configs_dir, load_config_file, one_of,
                                positive)
from jaxrl.jobs import train
from jaxrl.models import loader
from jaxrl.models.decoder import param_axes
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams, check_sampling
from jaxrl.tasks import math_checker, prompts
from jaxrl.tasks.base import final_answer
from jaxrl.verify import judge as judge_lib, methods, metrics, tournament

REPORT = "v1_infer.md"
PLOT = "v1_infer.png"


@dataclasses.dataclass(frozen=True)
class TournamentConfig:
    """`config.tournament`: the Swiss tournament's knobs (jaxrl/verify/tournament.py)."""

    d_min: int
    window: int
    tau: float

    def __post_init__(self):
        at_least("config.tournament.d_min", self.d_min, 1)
        at_least("config.tournament.window", self.window, 1)
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"config.tournament.tau must be in (0, 1], got {self.tau}")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """`config.judge`: how the model judges (jaxrl/verify/judge.py: ModelJudge)."""

    mode: str
    debias: bool
    reason: bool
    max_new_tokens: int
    temperature: float
    row_multiple: int
    len_multiple: int
    max_rows: int

    def __post_init__(self):
        one_of("config.judge.mode", self.mode, ("generate", "logits"))
        if self.reason and self.mode == "logits":
            raise ValueError("config.judge.reason=True needs config.judge.mode='generate': "
                             "logits mode reads the rating slot right after the prompt")
        at_least("config.judge.max_new_tokens", self.max_new_tokens, 1)
        check_sampling(self.temperature, 0, 1.0, "config.judge.")
        at_least("config.judge.row_multiple", self.row_multiple, 1)
        at_least("config.judge.len_multiple", self.len_multiple, 1)
        if self.max_rows < 1 or self.max_rows % self.row_multiple:
            raise ValueError(f"config.judge.max_rows={self.max_rows} must be a positive "
                             f"multiple of config.judge.row_multiple={self.row_multiple}")


@dataclasses.dataclass(frozen=True)
class CandidateSampling:
    """`config.sampling`: how the candidates are sampled; max_new_tokens 0 = the task's
    budget (its longest reference solution + EOS)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float

    def __post_init__(self):
        at_least("config.sampling.max_new_tokens", self.max_new_tokens, 0)
        check_sampling(self.temperature, self.top_k, self.top_p, "config.sampling.")


@dataclasses.dataclass(frozen=True)
class V1InferConfig:
    """configs/v1_infer.py, typed."""

    job: str
    seed: int
    num_problems: int
    num_candidates: int
    budgets: tuple[int, ...]
    bom_alpha: float
    tournament: TournamentConfig
    judge: JudgeConfig
    sampling: CandidateSampling
    model: loader.ModelSource
    policy_workdir: str
    task: prompts.TaskConfig
    data: prompts.DataConfig
    mesh: sharding.MeshConfig
    sharding: sharding.ShardingConfig
    distributed: sharding.DistributedConfig
    compile: compilation.CompileConfig

    def __post_init__(self):
        one_of("config.job", self.job, ("v1_infer",))
        at_least("config.seed", self.seed, 0)
        at_least("config.num_problems", self.num_problems, 1)
        if self.num_candidates < 2:
            raise ValueError(f"config.num_candidates={self.num_candidates}; pairwise judging "
                             "needs N >= 2 candidates per problem")
        if not self.budgets or any(k < 1 for k in self.budgets) or (
                len(set(self.budgets)) != len(self.budgets)):
            raise ValueError(f"config.budgets={self.budgets}; need distinct multiples of N, "
                             "each >= 1 (pointwise rates every candidate, knockout plays "
                             "N - 1 matches)")
        need = tournament.phase1_calls(self.num_candidates, self.tournament.d_min)
        if min(self.budgets) * self.num_candidates < need:
            raise ValueError(
                f"config.budgets={self.budgets}: the smallest, {min(self.budgets)} x N = "
                f"{min(self.budgets) * self.num_candidates} calls, is below what phase 1 "
                f"needs: {need} (ceil(N d_min / 2), N={self.num_candidates}, "
                f"config.tournament.d_min={self.tournament.d_min})")
        if not 0.0 < self.bom_alpha <= 1.0:
            raise ValueError(f"config.bom_alpha must be in (0, 1], got {self.bom_alpha}")
        if self.data.source == "embedded" and self.model.path:
            raise ValueError(f"config.model.path={self.model.path!r} needs config.data.source="
                             "'jsonl'; the embedded tasks are read by a preset on the character "
                             "tokenizer (set config.model.path='')")
        if self.data.source == "jsonl":
            if not self.model.path:
                raise ValueError("config.data.source='jsonl' needs config.model.path, an HF "
                                 "checkpoint directory: a random-init model cannot read text")
            positive("config.sampling.max_new_tokens (no task budget with jsonl)",
                     self.sampling.max_new_tokens)
        if self.policy_workdir and not os.path.isdir(
                os.path.join(self.policy_workdir, "checkpoints")):
            raise ValueError(f"config.policy_workdir={self.policy_workdir!r} has no "
                             "checkpoints/ directory (a `train` run's workdir has)")


CONFIG = V1InferConfig


def unflatten(flat: dict) -> dict:
    """`{"rl.kl_coef": 0.0}` -> `{"rl": {"kl_coef": 0.0}}` (resume.flatten_config's inverse)."""
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def with_fields_added_since(saved: dict) -> dict:
    """A train run's saved (flat) config with every TrainConfig field it predates set to
    configs/grpo.py's default, each named on the terminal, so that a policy trained by an
    older jaxrl can still be evaluated: a field is added with the default that keeps the
    behaviour from before it (e.g. `rollout.draft_cost_per_row` 0). The run's own values
    are kept."""
    default = build(train.TrainConfig, load_config_file(str(configs_dir() / "grpo.py")))
    added = {k: v for k, v in resume.flatten_config(dataclasses.asdict(default)).items()
             if k not in saved}
    if added:
        print("policy: the run's saved config predates "
              + ", ".join(f"{k} (set to {v!r})" for k, v in sorted(added.items())))
    return {**added, **saved}


def restore_policy(cfg: V1InferConfig, layout: sharding.Layout):
    """(model, params, tokenizer) of the newest checkpoint of the train run in
    `cfg.policy_workdir`, params placed by `layout`."""
    ckpt = checkpoint.Checkpointer(cfg.policy_workdir)
    try:
        saved = dict(ckpt.restore_metadata()["config"])
        saved.pop("data.prepared", None)  # not a TrainConfig field (train.saved_config)
        train_cfg = build(train.TrainConfig, unflatten(with_fields_added_since(saved)))
        # How attention and the layers are computed is this job's choice, not the run's
        # architecture.
        train_cfg = dataclasses.replace(train_cfg, model=dataclasses.replace(
            train_cfg.model, prefill_attention=cfg.model.prefill_attention,
            scan_layers=cfg.model.scan_layers, remat=cfg.model.remat))
        if train_cfg.model != cfg.model:
            diff = {k: (v, getattr(train_cfg.model, k))
                    for k, v in dataclasses.asdict(cfg.model).items()
                    if v != getattr(train_cfg.model, k)}
            raise ValueError(f"config.model differs from the config.model of the run in "
                             f"config.policy_workdir={cfg.policy_workdir!r}: "
                             + ", ".join(f"{k}={a!r} here, {b!r} there" for k, (a, b)
                                         in diff.items()))
        built = train.build(train_cfg, layout.mesh, cfg.policy_workdir)
        restored = ckpt.restore_latest_valid(built.state)
    finally:
        ckpt.close()
    print(f"policy: step {restored.step} of {cfg.policy_workdir}")
    return built.model, restored.state.params, built.source.tokenizer


def load_policy(cfg: V1InferConfig, layout: sharding.Layout):
    if cfg.policy_workdir:
        return restore_policy(cfg, layout)
    model, params, tok = loader.load(cfg.model, cfg.seed)
    return model, sharding.shard_params(params, param_axes(model.cfg), layout), tok


def canonical_math_answer(text: str) -> str | None:
    """The final answer as majority voting counts it: the last `\\boxed{}` (the answer the
    math reward reads first), spaces dropped; None without one. Equal values written
    differently (4, 4.0) count as different answers: a vote by string, as self-consistency
    baselines usually take it."""
    answer = math_checker.last_boxed(text)
    return None if answer is None else "".join(answer.split())


def problem_set(cfg: V1InferConfig, tok, workdir: str):
    """(source, questions, correct(p, text) -> bool, answer(text) -> canonical or None)."""
    source = prompts.make_source(cfg.task, cfg.data, tok, seed=cfg.seed,
                                 max_new_tokens=cfg.sampling.max_new_tokens,
                                 num_held_out=cfg.num_problems, workdir=workdir)
    if source.held_out is None:
        raise ValueError(f"config.data.manual_dir={cfg.data.manual_dir!r} has no test.jsonl "
                         "rows that fit config.data.max_prompt_len: no problems to judge")
    if source.task is not None:
        problems = source.held_out_problems
        return source, source.held_out_questions, (
            lambda p, text: source.task.check(problems[p], text)), final_answer
    gold = source.held_out[2]
    return source, source.held_out_questions, (
        lambda p, text: source.check(text, gold[p])), canonical_math_answer


def sample_candidates(cfg: V1InferConfig, model, params, tok, source, layout,
                      m: int) -> tuple[list[list[str]], int]:
    """`m` sampled completions per held-out problem (text before the stop token), in one
    batched call; and the tokens generated."""
    prompts_PL, lengths_P = source.held_out[:2]
    p, s = len(lengths_P), cfg.sampling
    limit = model.cfg.max_position_embeddings
    if prompts_PL.shape[1] + source.max_new_tokens > limit:
        raise ValueError(f"the longest prompt ({prompts_PL.shape[1]} tokens) plus "
                         f"{source.max_new_tokens} new tokens (config.sampling.max_new_tokens, "
                         f"0 = the task's budget) exceeds the model's {limit} positions")
    b, ways = p * m, max(layout.batch_ways, jax.process_count())
    rows = -(-b // ways) * ways  # pad with one-token rows to split evenly
    prompts_BL = np.full((rows, prompts_PL.shape[1]), tok.pad_id, np.int32)
    prompts_BL[:b] = np.repeat(prompts_PL, m, axis=0)
    lengths_B = np.ones(rows, np.int32)
    lengths_B[:b] = np.repeat(lengths_P, m)
    batch = sharding.shard_batch((prompts_BL, lengths_B, np.arange(rows, dtype=np.int32)),
                                 layout)
    out = generate(model, params, *batch, jax.random.key(cfg.seed),
                   SamplingParams.make(rows, s.temperature, s.top_k, s.top_p),
                   max_new_tokens=source.max_new_tokens, stop_tokens=tuple(tok.eos_ids),
                   pad_id=tok.pad_id)
    tokens_BN, lengths = np.asarray(out.tokens_BN), np.asarray(out.lengths_B)
    eos = set(tok.eos_ids)
    texts = [tok.decode([t for t in tokens_BN[i, :lengths[i]].tolist() if t not in eos])
             for i in range(b)]
    return [texts[i * m:(i + 1) * m] for i in range(p)], int(lengths[:b].sum())


def check_judge_positions(cfg: V1InferConfig, model, tok, questions, candidates) -> None:
    """The longest pair prompt plus the judge's reply must fit the model's positions."""
    reply = cfg.judge.max_new_tokens if cfg.judge.mode == "generate" else 2
    slot = None if cfg.judge.reason else "A"
    longest = 0
    for q, cands in zip(questions, candidates):
        a, b = sorted(cands, key=lambda c: len(tok.encode(c)))[-2:]
        longest = max(longest, len(judge_lib.encode_prompt(
            tok, judge_lib.pair_prompt_parts(q, a, b, slot))))
    limit = model.cfg.max_position_embeddings
    if longest + reply > limit:
        raise ValueError(f"the longest judge prompt ({longest} tokens: a problem and two "
                         f"candidates) plus {reply} reply tokens (config.judge.max_new_tokens) "
                         f"exceeds the model's {limit} positions; lower "
                         "config.sampling.max_new_tokens")


def _stats(judge) -> judge_lib.JudgeStats | None:
    """A ModelJudge's stats; a pointwise judge is its bound `pointwise` method."""
    return None if judge is None else getattr(judge, "__self__", judge).stats


def row(outcome: methods.Outcome, correct_PM: np.ndarray) -> dict:
    """The numbers of one method at one budget."""
    c = outcome.choice
    pick, se = metrics.pick_rate(correct_PM[:, :outcome.num_candidates], c.chosen_P)
    st = _stats(outcome.judge)
    first = float("nan")  # strict JSON has no NaN: None when there were no decisive calls
    if outcome.method in methods.BY_BUDGET[:3] and st is not None:
        first = metrics.first_shown_win_rate(st.first_shown_wins, st.decisive)
    return {"method": outcome.method, "multiplier": outcome.multiplier,
            "candidates": outcome.num_candidates, "pass_at_1": pick, "stderr": se,
            "judge_calls_per_problem": float(np.mean(c.calls_P)),
            "total_calls_per_problem": metrics.total_calls(outcome.num_candidates, c.calls_P),
            "judge_tokens": 0 if st is None else st.prompt_tokens + st.generated_tokens,
            "unparseable": 0 if st is None else st.unparseable,
            "tie_rate": metrics.tie_rate(c.top_count_P),
            "first_shown_win_rate": None if np.isnan(first) else first}


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def report(rows: list[dict], cfg: V1InferConfig, info: dict) -> str:
    n = cfg.num_candidates
    cols = [f"{k}x (V={k * n})" for k in cfg.budgets]
    lines = ["# V1-Infer", "",
             f"Policy: {info['policy']}. Problems: {info['problems']} of {info['problem_set']}. "
             f"N = {n} candidates, judge mode {cfg.judge.mode} (debias {cfg.judge.debias}, "
             f"reason {cfg.judge.reason}), {info['device']}, {info['seconds']:.0f} s.",
             f"Candidate accuracy (all {info['widest']} samples per problem): "
             f"{info['candidate_accuracy']:.3f}; {info['generated_tokens']} tokens generated.",
             "", "## Pass@1 by method and judge budget", "",
             "Fraction of problems whose chosen candidate is correct +- standard error "
             "[total calls per problem: generations + judge calls].", "",
             f"| method | {' | '.join(cols)} |", "|---" * (len(cols) + 1) + "|"]
    for name in methods.METHODS:
        mine = [r for r in rows if r["method"] == name]
        cells = [next(r for r in mine if r["multiplier"] in (k, None)) for k in cfg.budgets]
        lines.append(f"| {name} | " + " | ".join(
            f"{r['pass_at_1']:.3f} +- {r['stderr']:.3f} [{r['total_calls_per_problem']:.0f}]"
            for r in cells) + " |")
    lines += ["", "## Cost and judge behaviour", "",
              "Tie rate: problems whose winning score (majority: answer count) was shared. "
              "First-shown win rate: decisive pairwise calls won by the solution shown first "
              "(0.5 = no position bias).", "",
              "| method | budget | candidates | judge calls / problem | total calls / problem "
              "| judge tokens | unparseable | tie rate | first-shown win rate |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = "-" if r["multiplier"] is None else f"{r['multiplier']}x"
        lines.append(f"| {r['method']} | {budget} | {r['candidates']} | "
                     f"{r['judge_calls_per_problem']:.1f} | {r['total_calls_per_problem']:.1f} | "
                     f"{r['judge_tokens']} | {r['unparseable']} | {_fmt(r['tie_rate'])} | "
                     f"{_fmt(r['first_shown_win_rate'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in methods.METHODS:
        mine = sorted((r for r in rows if r["method"] == name),
                      key=lambda r: r["total_calls_per_problem"])
        x = [r["total_calls_per_problem"] for r in mine]
        y = [r["pass_at_1"] for r in mine]
        ax.plot(x, y, marker="o" if name in methods.BY_BUDGET else "s",
                linestyle="-" if name in methods.BY_BUDGET else "none", label=name)
    ax.set_xlabel("total calls per problem (N generations + V judge calls)")
    ax.set_ylabel("Pass@1 of the chosen candidate")
    ax.set_ylim(-0.02, 1.02)  # the same scale for every run
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: V1InferConfig, workdir: str) -> dict:
    start = time.perf_counter()
    compilation.set_up_cache(cfg.compile)
    layout = sharding.make_layout(cfg.mesh, cfg.sharding)
    model, params, tok = load_policy(cfg, layout)
    source, questions, correct, answer = problem_set(cfg, tok, workdir)
    n, m = cfg.num_candidates, methods.widest(cfg.num_candidates, cfg.budgets)
    candidates, generated = sample_candidates(cfg, model, params, tok, source, layout, m)
    check_judge_positions(cfg, model, tok, questions, candidates)
    correct_PM = np.asarray([[correct(p, t) for t in cands]
                             for p, cands in enumerate(candidates)], bool)
    answers_PM = [[answer(t) for t in cands] for cands in candidates]

    made = itertools.count(cfg.seed + 1)  # a fresh judge seed per method

    def model_judge(k: int) -> judge_lib.ModelJudge:
        j = cfg.judge
        return judge_lib.ModelJudge(
            model, params, tok, questions, [c[:k] for c in candidates], mode=j.mode,
            debias=j.debias, reason=j.reason, seed=next(made), max_new_tokens=j.max_new_tokens,
            temperature=j.temperature, row_multiple=j.row_multiple,
            len_multiple=j.len_multiple, max_rows=j.max_rows, layout=layout)

    t = cfg.tournament
    outcomes = methods.run_all(model_judge, lambda k: model_judge(k).pointwise, answers_PM,
                               correct_PM, n, cfg.budgets, cfg.seed, d_min=t.d_min,
                               window=t.window, tau=t.tau, alpha=cfg.bom_alpha)
    rows = [row(o, correct_PM) for o in outcomes]
    info = {"policy": cfg.policy_workdir or cfg.model.path or f"random {cfg.model.preset}",
            "problem_set": source.info.get("dataset") or source.info.get("task"),
            "problems": len(candidates), "widest": m, "generated_tokens": generated,
            "candidate_accuracy": float(correct_PM.mean()),
            "device": jax.devices()[0].device_kind, "seconds": time.perf_counter() - start}
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    md = report(rows, cfg, info)
    (out / REPORT).write_text(md)
    (out / "v1_infer.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1,
                                                    allow_nan=False))
    plot(rows, out / PLOT, f"V1-Infer, N = {n}, {info['problems']} problems of "
                           f"{info['problem_set']}")
    print(md)
    return {"info": info, "rows": rows}
