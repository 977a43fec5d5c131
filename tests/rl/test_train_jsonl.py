"""The training job on user JSONL math data and an HF checkpoint: GRPO with the math checker
as a host reward, data position == step, resume, export to HF, and config errors.

The checkpoint is a tiny random Qwen2 built here with transformers, with a character-level
tokenizer.json made with `tokenizers`: no hub access."""
import json
import pathlib
import string

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, decoders, models, pre_tokenizers  # noqa: E402

from configs import config_dict, train_config  # noqa: E402
from jaxrl import checkpoint, sharding  # noqa: E402
from jaxrl.jobs import train  # noqa: E402
from jaxrl.models import hf  # noqa: E402
from jaxrl.models.tokenizer import HFTokenizer  # noqa: E402
EOS = "<|endoftext|>"
TRAIN = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples?", "answer": "3+2=5\n#### 5"},
    {"question": "A box holds 4 pens. How many pens in 2 boxes?", "answer": "#### 8"},
    {"problem": "What is 10 - 7?", "solution": "It is $\\boxed{3}$."},
    {"question": "Half of 12?", "answer": 6},
    "this row is not a JSON object",
    {"question": "Sam reads " + "very " * 60 + "slowly: 9 pages. How many?", "answer": "9"},
    {"question": "What is 1 + 1?", "answer": "2"},
]
TEST = [{"question": "What is 2 + 2?", "answer": "#### 4"},
        {"question": "What is 5 - 1?", "answer": "4"}]
GOOD_TRAIN_ROWS = 5  # TRAIN less the malformed row and the one over max_prompt_len


def load_config(arg=None):
    return config_dict("grpo", arg)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """A random Qwen2ForCausalLM with a character-level tokenizer.json and an eos."""
    path = tmp_path_factory.mktemp("qwen2_tiny")
    chars = sorted(set(string.printable) - set("\t\r\x0b\x0c"))
    vocab = {EOS: 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOS])
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=0, pad_token_id=None))
    model.save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    return path


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k_like")
    for name, rows in (("train", TRAIN), ("test", TEST)):
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        (path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return path


def jsonl_config(ckpt_dir, manual_dir, rl_steps=2):
    c = load_config(f"data=jsonl,rl_steps={rl_steps}")
    c.model.path = str(ckpt_dir)
    c.model.dtype = "float32"
    c.data.manual_dir = str(manual_dir)
    c.data.max_prompt_len = 160
    c.rl.num_prompts = 2
    c.rl.num_generations = 4
    c.rl.num_minibatches = 1
    c.rl.max_new_tokens = 8
    c.eval.num_problems = 2
    c.checkpoint.every = 1
    # A random policy's groups mostly score all 0: no signal, zero gradient. Weight decay
    # moves the params anyway (lr is 0 at step 0, then 1e-2), so the exported policy must
    # differ from the initial one.
    c.optim.warmup_steps = 1
    c.optim.weight_decay = 0.5
    c.rl.learning_rate = 1e-2
    return c


def read_rows(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def test_jsonl_grpo_runs_resumes_and_exports_hf(ckpt_dir, manual_dir, tmp_path):
    config = jsonl_config(ckpt_dir, manual_dir)
    first = train.run(train_config(config), str(tmp_path))
    assert first["steps"] == 2 and set(first["accuracy"]) == {0, 2}
    data = first["data"]
    assert (data["train_rows"], data["held_out_rows"]) == (GOOD_TRAIN_ROWS, 2)
    assert (data["malformed_rows"], data["too_long_rows"]) == (1, 1)
    rl_rows = [r for r in read_rows(tmp_path) if "eval/accuracy" not in r]
    assert [r["step"] for r in rl_rows] == [1, 2]
    for r in rl_rows:
        assert r["phase"] == 1 and r["reward_errors"] == 0 and r["reward_timeouts"] == 0
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["reward"] <= 1 and "format_rate" in r
        assert 1 <= r["response_length/max"] <= 8
    before = read_rows(tmp_path)

    resumed = train.run(train_config(jsonl_config(ckpt_dir, manual_dir, rl_steps=3)),
                        str(tmp_path))
    assert resumed["steps"] == 3 and set(resumed["accuracy"]) == {3}  # no eval at restart
    assert resumed["data"]["malformed_rows"] == 0  # prepared once, by the first run
    rows = read_rows(tmp_path)
    assert [r for r in rows if r["step"] <= 2] == before  # kept, not recomputed
    assert [r["step"] for r in rows if "eval/accuracy" not in r] == [1, 2, 3]

    # workdir/hf holds the final policy: our loader, transformers and the checkpoint agree.
    config3 = train_config(jsonl_config(ckpt_dir, manual_dir, rl_steps=3))
    model, source, _, state, _, _ = train.build(config3, sharding.make_mesh(config3.mesh),
                                                str(tmp_path))
    initial = jax.device_get(state.params)
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    try:
        assert ckpt.latest_step() == 3
        final = jax.device_get(ckpt.restore(state).params)
    finally:
        ckpt.close()
    exported_model, exported = hf.load(tmp_path / "hf", dtype="float32")
    assert exported_model.cfg == model.cfg
    jax.tree.map(np.testing.assert_array_equal, exported, final)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, final, initial)))
    assert HFTokenizer.from_dir(tmp_path / "hf").eos_ids == source.tokenizer.eos_ids == (0,)

    torch_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens_BT = np.asarray([source.tokenizer.encode(text) for text in
                            ("What is 2 + 2?\nIt is 4.", "So 12 / 2 = \\boxed{6}!!")], np.int32)
    ours = np.asarray(exported_model.apply({"params": exported}, tokens_BT))
    with torch.no_grad():
        theirs = torch_model(input_ids=torch.tensor(tokens_BT)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_data_position_is_the_step(ckpt_dir, manual_dir, tmp_path):
    config = jsonl_config(ckpt_dir, manual_dir)
    source = train.build(train_config(config), sharding.make_mesh(config.mesh),
                         str(tmp_path)).source
    n = GOOD_TRAIN_ROWS
    # Steps 0..4 of 2 prompts read positions 0..9: every kept row once per epoch, each
    # epoch in its own seeded order, the same on every call.
    positions = np.concatenate([source.row_indices(s, 2) for s in range(5)])
    kept = set(source.rows.tolist())
    assert len(kept) == n and set(positions[:n]) == set(positions[n:]) == kept
    np.testing.assert_array_equal(positions[2:4], source.row_indices(1, 2))
    prompts_PL, lengths_P, answers, ids_P = source.rl_batch(3, 2)
    np.testing.assert_array_equal(ids_P, source.row_indices(3, 2))  # ids name the rows
    assert prompts_PL.shape == (2, source.prompt_len) and prompts_PL.dtype == np.int32
    from jaxrl.tasks import tfds_builders
    train_rows = tfds_builders.load_source(source.info["dataset"], source.info["data_dir"], "train")
    rows = [train_rows[int(i)] for i in source.row_indices(3, 2)]
    assert answers == [r["answer"] for r in rows]
    for ids_L, length, row in zip(prompts_PL, lengths_P, rows):
        want = source.tokenizer.encode(config.data.prompt_template.format(prompt=row["prompt"]))
        assert ids_L[:length].tolist() == want
        assert (ids_L[length:] == source.tokenizer.pad_id).all()


@pytest.mark.parametrize("field,value,match", [
    ("sft.steps", 3, "config.sft.steps=3, but JSONL math rows have only final answers"),
    ("model.path", "", "needs config.model.path"),
    ("model.path", "/nonexistent", "has no config.json"),
    ("rl.max_new_tokens", 0, "max_new_tokens must be >= 1"),
    ("data.manual_dir", "", "has no train.jsonl"),
    ("data.on_error", "ignore", "config.data.on_error='ignore'; valid"),
    ("data.prompt_template", "Solve it.", "has no {prompt}"),
    ("data.prompt_template", "{problem}", "not a str.format template"),
    ("data.max_prompt_len", 0, "data.max_prompt_len must be >= 1"),
    ("data.source", "csv", "config.data.source='csv'; valid"),
])
def test_bad_jsonl_config_is_named(ckpt_dir, manual_dir, field, value, match):
    config = jsonl_config(ckpt_dir, manual_dir)
    train_config(config)
    node, leaf = field.rsplit(".", 1)
    config[node][leaf] = value
    with pytest.raises(ValueError, match=match):
        train_config(config)


def test_model_path_needs_the_jsonl_source(ckpt_dir):
    config = load_config()
    config.model.path = str(ckpt_dir)
    with pytest.raises(ValueError, match="needs config.data.source='jsonl'"):
        train_config(config)
