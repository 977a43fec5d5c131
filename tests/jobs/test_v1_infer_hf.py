"""The v1_infer job on a tiny HF checkpoint (random Qwen2, character-level tokenizer.json,
built locally as in tests/rl/test_train_jsonl.py) over JSONL math: pipeline only (the
problems read, the budgets kept, the files written), in both judge modes."""
import pytest

pytest.importorskip("tensorflow_datasets")

from configs import config_dict  # noqa: E402
from jaxrl import main  # noqa: E402
from jaxrl.jobs import v1_infer  # noqa: E402
from rl.test_train_jsonl import TEST, ckpt_dir, manual_dir  # noqa: E402,F401  (fixtures)
from test_v1_infer import check_outputs  # noqa: E402


@pytest.mark.parametrize("mode", ["generate", "logits"])
def test_hf_checkpoint_on_jsonl(ckpt_dir, manual_dir, tmp_path, mode):  # noqa: F811
    config = config_dict("v1_infer", f"data=jsonl,small=True,mode={mode}")
    config.model.path = str(ckpt_dir)
    config.model.dtype = config.model.param_dtype = "float32"
    config.data.manual_dir = str(manual_dir)
    config.data.max_prompt_len = 160
    config.budgets = (1, 2)
    cfg = main.typed_config(config)[1]
    summary = v1_infer.run(cfg, str(tmp_path))
    rows = check_outputs(tmp_path, cfg, problems=len(TEST))
    assert summary["info"]["problem_set"].startswith("jsonl")
    assert summary["info"]["generated_tokens"] > 0
    if mode == "logits":  # expected ratings from the next-token distribution: no parsing
        assert sum(r["unparseable"] for r in rows) == 0


def test_jsonl_problem_set_reads_test_rows(ckpt_dir, manual_dir, tmp_path):  # noqa: F811
    config = config_dict("v1_infer", "data=jsonl,small=True")
    config.model.path = str(ckpt_dir)
    config.data.manual_dir = str(manual_dir)
    config.data.max_prompt_len = 160
    cfg = main.typed_config(config)[1]
    tok = v1_infer.loader.load(cfg.model, 0)[2]
    _, questions, correct, answer = v1_infer.problem_set(cfg, tok, str(tmp_path))
    assert questions == [row["question"] for row in TEST]  # both TEST answers are 4
    assert [correct(p, "so \\boxed{4}.") for p in range(2)] == [True, True]
    assert not correct(0, "so \\boxed{5}.")
    # Majority votes count the boxed answer's text, spaces dropped.
    assert answer("#### 4") is None and answer("\\boxed{ 4 }, not \\boxed{5}") == "5"
    assert answer("\\boxed{\\frac {1}{2}}") == answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
