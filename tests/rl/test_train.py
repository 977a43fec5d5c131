"""The training job: a stopped-and-resumed run equals an uninterrupted one, SIGTERM saves
and exits cleanly, and bad configs fail before compiling, naming the field."""
import json
import os
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import pytest

from jaxrl.config_utils import load_config_file
from jaxrl import checkpoint, sharding
from jaxrl.rl import train

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(arg=None):
    return load_config_file(str(ROOT / "configs/grpo.py"), arg)


def tiny_config(sft_steps=3, rl_steps=3):
    c = load_config(f"model=tiny,sft_steps={sft_steps},rl_steps={rl_steps}")
    c.task.max_steps = 1
    c.sft.batch_size = 8
    c.rl.num_prompts = 2
    c.rl.num_generations = 4
    c.eval.num_problems = 8
    c.eval.every = 100
    c.checkpoint.every = 1
    return c


def step_rows(workdir):
    """Per-step training metrics, without evaluations and wall-clock times."""
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "step_time_s"}
            for r in rows if "eval/accuracy" not in r]


def final_params(config, workdir):
    _, _, state, _ = train.build(config, sharding.make_mesh(config.mesh))
    ckpt = checkpoint.Checkpointer(workdir)
    try:
        return ckpt.latest_step(), jax.device_get(ckpt.restore(state).params)
    finally:
        ckpt.close()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = tiny_config()
    full = train.run(config, str(tmp_path / "a"))
    assert full["steps"] == 6 and set(full["accuracy"]) == {0, 3, 6}
    train.run(tiny_config(rl_steps=1), str(tmp_path / "b"))  # stops after step 4
    resumed = train.run(config, str(tmp_path / "b"))
    assert resumed["steps"] == 6

    rows_a, rows_b = step_rows(tmp_path / "a"), step_rows(tmp_path / "b")
    assert [r["step"] for r in rows_a] == list(range(1, 7))
    assert rows_a == rows_b
    step_a, params_a = final_params(config, tmp_path / "a")
    step_b, params_b = final_params(config, tmp_path / "b")
    assert step_a == step_b == 6
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_sigterm_saves_and_exits_then_resume_finishes(tmp_path):
    config = tiny_config(sft_steps=40, rl_steps=0)
    config.checkpoint.every = 1000  # only the SIGTERM save and the final save
    metrics = tmp_path / "metrics.jsonl"

    def send_sigterm_after_first_step():
        deadline = time.time() + 120
        while time.time() < deadline:
            if metrics.exists() and any('"sft_loss"' in line for line in metrics.read_text().splitlines()):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=send_sigterm_after_first_step, daemon=True).start()
    stopped = train.run(config, str(tmp_path))
    assert 1 <= stopped["steps"] < 40
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == stopped["steps"]
    ckpt.close()
    assert train.run(config, str(tmp_path))["steps"] == 40


@pytest.mark.parametrize("field,value,match", [
    ("task.name", "chess", "config.task.name='chess'; valid"),
    ("task.difficulty", 9, "difficulty must be one of"),
    ("model.preset", "gpt5", "config.model.preset='gpt5'"),
    ("rl.advantage", "ppo", "config.rl.advantage='ppo'; valid"),
    ("rl.loss_agg", "sum", "config.rl.loss_agg='sum'"),
    ("rl.kl_estimator", "k4", "config.rl.kl_estimator='k4'"),
    ("rl.old_logprobs", "cached", "config.rl.old_logprobs='cached'"),
    ("rl.num_generations", 1, "num_generations must be >= 2"),
    ("rl.num_minibatches", 3, "num_minibatches=3 must divide"),
    ("rl.dual_clip", 0.5, "dual_clip must be 0"),
    ("rl.top_p", 0.0, "top_p must be in"),
    ("rl.learning_rate", 0.0, "rl.learning_rate must be > 0"),
    ("sft.batch_size", 0, "sft.batch_size must be >= 1"),
])
def test_bad_train_config_is_named(field, value, match):
    config = load_config()
    node, leaf = field.rsplit(".", 1)
    config[node][leaf] = value
    with pytest.raises(ValueError, match=match):
        train.validate(config)


def test_default_config_is_valid_and_variants_parse():
    train.validate(load_config())
    c = load_config("task=countdown,difficulty=1")
    train.validate(c)
    assert (c.task.name, c.task.difficulty) == ("countdown", 1)
    sft = load_config_file(str(ROOT / "configs/sft.py"), "task=sort")
    train.validate(sft)
    assert (sft.task.name, sft.rl.steps, sft.sft.steps) == ("sort", 0, 200)
