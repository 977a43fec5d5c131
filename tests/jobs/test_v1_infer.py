"""The v1_infer job end to end on CPU: the tiny random-init setting of configs/v1_infer.py
(every method at every budget in the report, the plot written, budgets kept), a tiny HF
checkpoint on JSONL math (pipeline only), a policy restored from a train run's workdir,
and config errors named before anything compiles."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from configs import config_dict, train_config
from jaxrl import checkpoint, main, resume, sharding
from jaxrl.jobs import train, v1_infer
from jaxrl.models import loader
from jaxrl.verify import methods

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(arg="model=tiny,small=True"):
    return config_dict("v1_infer", arg)


def check_outputs(workdir, cfg: v1_infer.V1InferConfig, problems: int) -> list[dict]:
    """The files exist; every method has a cell at every budget; the calls are the budgets'."""
    md = (workdir / v1_infer.REPORT).read_text()
    assert (workdir / v1_infer.PLOT).read_bytes()[:8] == PNG_MAGIC
    n = cfg.num_candidates
    assert " | ".join(f"{k}x (V={k * n})" for k in cfg.budgets) in md
    for name in methods.METHODS:
        (line,) = [ln for ln in md.splitlines() if ln.startswith(f"| {name} | ") and "+-" in ln]
        assert line.count("+-") == len(cfg.budgets), line
    data = json.loads((workdir / "v1_infer.json").read_text())
    assert data["info"]["problems"] == problems
    assert data["info"]["widest"] == n + max(cfg.budgets) * n
    rows = data["rows"]
    assert len(rows) == len(methods.BY_BUDGET) * len(cfg.budgets) + len(methods.FIXED)
    by = {(r["method"], r["multiplier"]): r for r in rows}
    for k in cfg.budgets:
        v = k * n
        # Swiss and random pairing spend the whole budget; knockout (N - 1) floor(V / (N - 1)).
        for name in methods.BY_BUDGET[:2]:
            assert by[name, k]["judge_calls_per_problem"] == v
            assert by[name, k]["total_calls_per_problem"] == n + v
        assert by["knockout", k]["judge_calls_per_problem"] == (n - 1) * (v // (n - 1))
        assert by["pointwise, V calls", k]["judge_calls_per_problem"] == v
        matched = by["pointwise, total-matched N'=(N+V)/2", k]
        assert matched["candidates"] == matched["judge_calls_per_problem"] == (n + v) // 2
        majority = by["majority, N+V samples", k]
        assert (majority["candidates"], majority["judge_tokens"]) == (n + v, 0)
        for name in methods.BY_BUDGET[:5]:
            assert by[name, k]["judge_tokens"] > 0
    oracle = by["oracle Pass@N", None]["pass_at_1"]
    for r in rows:
        assert 0.0 <= r["pass_at_1"] <= 1.0
        first = r["first_shown_win_rate"]  # pairwise judges only; None: no decisive call
        assert first is None or (r["method"] in methods.BY_BUDGET[:3] and 0.0 <= first <= 1.0)
        if r["candidates"] == n:  # the ceiling of every method choosing among the first N
            assert r["pass_at_1"] <= oracle
    return rows


def test_tiny_job_reports_every_method_and_budget(tmp_path):
    job, cfg = main.typed_config(tiny_config())
    assert job is v1_infer
    summary = v1_infer.run(cfg, str(tmp_path))
    rows = check_outputs(tmp_path, cfg, problems=4)
    assert rows == json.loads(json.dumps(summary["rows"]))
    # A random model's generate-mode replies rarely parse: each counts as a tie.
    swiss = [r for r in rows if r["method"] == methods.SWISS]
    assert all(0 <= r["unparseable"] <= r["judge_calls_per_problem"] * 4 for r in swiss)


def test_unflatten_inverts_flatten_config():
    cfg = dataclasses.asdict(train_config(config_dict("grpo")))
    flat = resume.flatten_config(cfg)
    assert resume.flatten_config(v1_infer.unflatten(flat)) == flat
    assert v1_infer.unflatten({"a.b.c": 1, "a.d": 2, "e": 3}) == {"a": {"b": {"c": 1}, "d": 2},
                                                                 "e": 3}


def test_policy_from_a_train_workdir(tmp_path):
    run_dir = tmp_path / "run"
    c = config_dict("grpo", "model=tiny,sft_steps=2,rl_steps=0")
    c.optim.warmup_steps = 1  # the rate is 0 at step 0: the second step moves the params
    c.sft.batch_size = 8
    c.eval.num_problems = 8
    c.task.train_pool = 0
    c.task.max_steps = 1  # one length bucket: one SFT program, short evaluations
    train.run(train_config(c), str(run_dir))

    config = tiny_config()
    config.policy_workdir = str(run_dir)
    config.model.preset = "small"
    with pytest.raises(ValueError, match="preset='small' here, 'tiny' there"):
        v1_infer.run(main.typed_config(config)[1], str(tmp_path / "bad"))

    config.model.preset = "tiny"
    cfg = main.typed_config(config)[1]
    layout = sharding.make_layout(cfg.mesh, cfg.sharding)
    _, params, _ = v1_infer.restore_policy(cfg, layout)
    _, init, _ = loader.load(cfg.model, c.seed)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, init)
    assert all(jax.tree.leaves(moved))  # trained params, not the random init

    # A run saved by an older jaxrl lacks the fields added since: they take configs/grpo.py's
    # defaults and are named; the run's own values stay.
    restore_metadata = checkpoint.Checkpointer.restore_metadata

    def older(self):
        meta = restore_metadata(self)
        config = dict(meta["config"])
        assert config.pop("rollout.draft_cost_per_row") == 0.0
        config["rollout.draft_cost"] = 0.5  # the run's own value
        return {**meta, "config": config}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint.Checkpointer, "restore_metadata", older)
        ckpt = checkpoint.Checkpointer(str(run_dir))
        flat = ckpt.restore_metadata()["config"]
        ckpt.close()
        flat.pop("data.prepared")
        got = v1_infer.with_fields_added_since(flat)
        assert got["rollout.draft_cost_per_row"] == 0.0 and got["rollout.draft_cost"] == 0.5
        assert set(got) == set(flat) | {"rollout.draft_cost_per_row"}
        _, again, _ = v1_infer.restore_policy(cfg, layout)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), again,
                                            params)))


@pytest.mark.parametrize("field,value,match", [
    ("num_candidates", 1, "config.num_candidates=1; pairwise judging needs N >= 2"),
    ("budgets", (), r"config.budgets=\(\); need distinct multiples"),
    ("budgets", (0, 1), r"config.budgets=\(0, 1\)"),
    ("tournament.d_min", 3, r"the smallest, 1 x N = 4 calls, is below what phase 1 needs: 6"),
    ("tournament.tau", 0.0, "config.tournament.tau must be in"),
    ("judge.mode", "vibes", "config.judge.mode='vibes'; valid"),
    ("judge.reason", True, None),  # valid in generate mode; logits below
    ("judge.max_rows", 12, "config.judge.max_rows=12 must be a positive multiple of "
                           "config.judge.row_multiple=32"),
    ("bom_alpha", 0.0, "config.bom_alpha must be in"),
    ("sampling.temperature", -1.0, "config.sampling.temperature must be >= 0"),
    ("policy_workdir", "/nonexistent", "has no checkpoints/ directory"),
    ("data.source", "jsonl", "config.data.manual_dir=''"),
])
def test_bad_config_is_named(field, value, match):
    config = tiny_config()
    node, _, leaf = field.rpartition(".")
    (config[node] if node else config)[leaf] = value
    if match is None:
        main.typed_config(config)
        config.judge.mode = "logits"
        match = "reason=True needs config.judge.mode='generate'"
    with pytest.raises(ValueError, match=match):
        main.typed_config(config)


def test_embedded_problem_set_checks_reference_solutions():
    cfg = main.typed_config(tiny_config())[1]
    tok = loader.load(cfg.model, 0)[2]
    source, questions, correct, answer = v1_infer.problem_set(cfg, tok, "")
    prompts_PL, lengths_P = source.held_out[:2]
    assert len(questions) == cfg.num_problems
    for p, (q, prob) in enumerate(zip(questions, source.held_out_problems)):
        assert tok.encode(q) == prompts_PL[p, :lengths_P[p]].tolist()  # the text the policy saw
        assert correct(p, prob.solution) and answer(prob.solution) == prob.answer
        assert not correct(p, prob.solution + "\n#x")
