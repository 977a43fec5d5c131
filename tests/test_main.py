"""The entry point: the generate job end to end, and config errors before any compile."""
import json
import subprocess
import sys

import pytest

from configs import ROOT, config_dict
from jaxrl import main
from jaxrl.jobs import generate
from jaxrl.models.tokenizer import CharTokenizer


def get_config(arg=None):
    return config_dict("generate", arg)


def test_generate_job_writes_completions(tmp_path):
    config = get_config()
    config.sampling.max_new_tokens = 5
    config.model.dtype = "float32"
    job, cfg = main.typed_config(config)
    assert job is generate
    summary = generate.run(cfg, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(config.prompts) * config.num_samples == summary["rows"]
    tok = CharTokenizer()
    for row in rows:
        assert 1 <= len(row["tokens"]) <= 5
        assert row["completion"] == tok.decode(row["tokens"])
    assert summary["generated_tokens"] == sum(len(r["tokens"]) for r in rows)
    assert summary["tokens_per_second"] > 0


@pytest.mark.parametrize("field,value,match", [
    ("job", "train_everything", "config.job='train_everything'; valid"),
    ("model.preset", "gpt5", "config.model.preset='gpt5'; valid"),
    ("model.path", "/nonexistent", "has no config.json"),
    ("model.dtype", "int8", "config.model.dtype='int8'"),
    ("num_samples", 0, "num_samples must be >= 1"),
    ("sampling.max_new_tokens", 0, "max_new_tokens must be >= 1"),
    ("sampling.top_p", 1.5, "config.sampling.top_p must be in"),
])
def test_bad_config_is_named(field, value, match):
    config = get_config()
    node, _, leaf = field.rpartition(".")
    (config[node] if node else config)[leaf] = value
    with pytest.raises(ValueError, match=match):
        main.typed_config(config)


def test_unknown_and_missing_fields_are_named():
    config = get_config().to_dict()
    config["sampling"]["temprature"] = 0.5
    with pytest.raises(ValueError, match="config.sampling has no field temprature; "
                                         "config.sampling has: max_new_tokens, temperature"):
        main.typed_config(config)
    config = get_config().to_dict()
    del config["model"]["dtype"]
    with pytest.raises(ValueError, match="config.model lacks dtype"):
        main.typed_config(config)


def test_wrong_types_are_named():
    config = get_config().to_dict()
    config["num_samples"] = "2"
    with pytest.raises(ValueError, match="config.num_samples='2' is a str, not a int"):
        main.typed_config(config)


def test_prompt_beyond_the_model_positions_is_refused(tmp_path):
    config = get_config()
    config.prompts = ("x" * 2040,)
    config.sampling.max_new_tokens = 16
    with pytest.raises(ValueError, match=r"2040 tokens\) plus config.sampling.max_new_tokens=16 exceeds the "
                                         "model's 2048 positions"):
        generate.run(main.typed_config(config)[1], str(tmp_path))


def test_config_string_args():
    assert get_config("model=qwen2_0p5b").model.preset == "qwen2_0p5b"
    with pytest.raises(ValueError, match="unknown config arg 'size'"):
        get_config("size=3")


def test_cli_with_flag_overrides(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxrl.main", "--config=configs/generate.py",
         f"--workdir={tmp_path}", "--config.sampling.max_new_tokens=4", "--config.num_samples=1",
         "--config.prompts=('1+1=',)"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tokens/s" in out.stdout
    rows = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["prompt"] == "1+1="
