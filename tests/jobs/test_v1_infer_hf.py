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
