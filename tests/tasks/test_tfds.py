"""The TFDS builders: datasets written to array_record and read back with a data source,
checked against what made them (the task generators, the JSONL rows), with no TensorFlow.
"""
import json
import logging
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from jaxrl.tasks import TASKS, get_task, math_reward  # noqa: E402
from jaxrl.tasks import tfds_builders as tb  # noqa: E402


def read_all(name, data_dir, split):
    source = tb.load_source(name, data_dir, split)
    return [source[i] for i in range(len(source))]


# ---- Embedded tasks ----


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_embedded_split_is_the_generator_stream(tmp_path, task_name):
    builder = tb.prepare_embedded(tmp_path, task_name, 2, train_size=6, test_size=3, seed=5)
    name = f"embedded_tasks/{builder.builder_config.name}"
    assert name == f"embedded_tasks/{task_name}-d2-train6-test3-seed5"
    assert builder.info.file_format.value == "array_record"
    task = get_task(task_name, 2)
    for split, size, stream in (("train", 6, 0), ("test", 3, 1)):
        rng = np.random.default_rng([5, stream])  # the documented seeding
        expected = [task.sample(rng) for _ in range(size)]
        got = read_all(name, tmp_path, split)
        assert len(got) == size
        for p, example in zip(expected, got):
            assert example["prompt"] == p.prompt
            assert example["solution"] == p.solution
            assert example["answer"] == p.answer
            assert example["target"].dtype == np.int32
            assert example["target"].shape == (task.target_len,)
            assert tuple(example["target"].tolist()) == p.target
            assert task.check(p, example["solution"])
    # The splits are different streams.
    assert read_all(name, tmp_path, "train")[0]["prompt"] != read_all(name, tmp_path, "test")[0][
        "prompt"]


def test_embedded_settings_get_their_own_directory(tmp_path):
    a = tb.prepare_embedded(tmp_path, "sort", 1, train_size=4, test_size=0)
    b = tb.prepare_embedded(tmp_path, "sort", 1, train_size=4, test_size=0, seed=1)
    c = tb.prepare_embedded(tmp_path, "sort", 1, train_size=4, test_size=0, max_steps=3)
    names = [x.builder_config.name for x in (a, b, c)]
    assert names == ["sort-d1-train4-test0", "sort-d1-train4-test0-seed1",
                     "sort-d1-steps3-train4-test0"]
    prompts = [[ex["prompt"] for ex in read_all(f"embedded_tasks/{n}", tmp_path, "train")]
               for n in names]
    assert prompts[0] != prompts[1]
    assert all(len(p) <= get_task("sort", 1, 3).max_prompt_len for p in prompts[2])
    with pytest.raises(ValueError, match="Unknown split 'test'"):  # size 0: left out
        tb.load_source(f"embedded_tasks/{names[0]}", tmp_path, "test")


def test_prepare_uses_the_predefined_config_of_that_name(tmp_path, monkeypatch):
    # Default settings name a predefined config, which TFDS wants by name, not as a copy.
    # (Writing it would take 100k problems; the construction is what is under test.)
    monkeypatch.setattr(tb.EmbeddedTasks, "download_and_prepare", lambda self: None)
    builder = tb.prepare_embedded(tmp_path, "sort", 0)
    assert builder.builder_config is tb.EmbeddedTasks.builder_configs["sort-d0"]
    assert (builder.builder_config.train_size, builder.builder_config.test_size) == (
        tb.DEFAULT_TRAIN_SIZE, tb.DEFAULT_TEST_SIZE)


def test_embedded_configs_and_errors():
    names = [c.name for c in tb.EmbeddedTasks.BUILDER_CONFIGS]
    assert len(names) == len(set(names))
    assert {"arithmetic-d0", "countdown-d3", "sort-d1"} <= set(names)
    assert tb.embedded_config("countdown").name == "countdown-d1"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        tb.embedded_config("nope")
    with pytest.raises(ValueError, match=r"difficulty must be one of .*got 9"):
        tb.embedded_config("sort", 9)
    with pytest.raises(ValueError, match="train_size must be an int >= 0, got -1"):
        tb.embedded_config("sort", train_size=-1)
    with pytest.raises(ValueError, match="both 0: nothing to write"):
        tb.embedded_config("sort", train_size=0, test_size=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got 1.5"):
        tb.embedded_config("sort", seed=1.5)


# ---- User JSONL ----

GSM8K = {"question": "Tom has 3 apples and buys 1,200 more. How many?",
         "answer": "3 + 1200 = 1203\n#### 1,203"}
MATH = {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "level": "Level 1",
        "solution": "We get $\\boxed{\\frac{3}{4}}$ since $\\frac{1}{2} = \\frac{2}{4}$."}
DEEPSCALER = {"problem": "Find $x$ if $2x = \\sqrt{8}$.", "answer": "\\sqrt{2}",
              "solution": "So $x = \\boxed{\\sqrt{2}}$."}


def write_jsonl(path, lines):
    path.write_bytes(b"".join(
        (line if isinstance(line, bytes) else
         (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n"
        for line in lines))


def test_jsonl_rows_are_read_in_order(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", [GSM8K, MATH, DEEPSCALER, {"problem": "1+1?",
                                                                   "answer": 2}])
    write_jsonl(manual / "test.jsonl", [MATH])
    builder = tb.prepare_jsonl(tmp_path / "data", manual, name="mix")
    assert builder.malformed == []
    train = read_all("jsonl_math/mix", tmp_path / "data", "train")
    assert train == [
        {"prompt": GSM8K["question"], "answer": "1,203"},
        {"prompt": MATH["problem"], "answer": "\\frac{3}{4}"},
        {"prompt": DEEPSCALER["problem"], "answer": "\\sqrt{2}"},
        {"prompt": "1+1?", "answer": "2"},
    ]
    assert read_all("jsonl_math/mix", tmp_path / "data", "test") == [
        {"prompt": MATH["problem"], "answer": "\\frac{3}{4}"}]
    # The stored answers are what the reward grades against (in this thread: verdict).
    assert math_reward.verdict("so \\boxed{1203}", train[0]["answer"])
    assert math_reward.verdict("so \\boxed{0.75}", train[1]["answer"])
    assert math_reward.verdict("x is \\boxed{\\frac{2}{\\sqrt{2}}}", train[2]["answer"])
    assert not math_reward.verdict("so \\boxed{0.7}", train[1]["answer"])
    # Written and read without TensorFlow.
    assert "tensorflow" not in sys.modules


def malformed_file(path):
    write_jsonl(path, [
        GSM8K,  # 1: good
        '{"question": "unterminated',  # 2: bad JSON
        "[1, 2]",  # 3: not an object
        {"text": "q", "answer": "4"},  # 4: no prompt field
        {"question": "q"},  # 5: no answer field
        {"problem": "q", "solution": "no box here"},  # 6: no extractable answer
        {"question": "q", "answer": "work\n####  "},  # 7: empty #### answer
        b'{"question": "caf\xe9", "answer": "1"}',  # 8: not UTF-8
        "",  # 9: blank, ignored
        {"question": "", "answer": "1"},  # 10: empty prompt
        {"question": "q", "answer": None},  # 11: answer of the wrong type
        "[" * 100000 + "]" * 100000,  # 12: too deep for the JSON parser
        MATH,  # 13: good
    ])


EXPECTED_SKIPS = [
    (2, "bad JSON"), (3, "must be a JSON object"), (4, "no prompt field"),
    (5, "no answer field"), (6, "no final answer"), (7, "no final answer"),
    (8, "not UTF-8"), (10, "must be a non-empty string"),
    (11, "must be a string or a number"), (12, "bad JSON"),
]


def test_malformed_rows_are_skipped_and_reported(tmp_path, caplog):
    manual = tmp_path / "manual"
    manual.mkdir()
    malformed_file(manual / "train.jsonl")
    path = str(manual / "train.jsonl")
    with caplog.at_level(logging.WARNING):
        builder = tb.prepare_jsonl(tmp_path / "data", manual, name="dirty", on_error="skip")
    assert [(e.path, e.line) for e in builder.malformed] == [(path, n) for n, _ in EXPECTED_SKIPS]
    for error, (line, reason) in zip(builder.malformed, EXPECTED_SKIPS):
        assert str(error).startswith(f"{path}:{line}: ")
        assert reason in error.reason
    assert f"{path}:6: no final answer" in caplog.text
    assert f"{path}: kept 2 rows, skipped 10 malformed" in caplog.text
    assert read_all("jsonl_math/dirty", tmp_path / "data", "train") == [
        {"prompt": GSM8K["question"], "answer": "1,203"},
        {"prompt": MATH["problem"], "answer": "\\frac{3}{4}"}]


def test_malformed_row_raises_when_configured(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    malformed_file(manual / "train.jsonl")
    path = str(manual / "train.jsonl")
    with pytest.raises(tb.MalformedRowError, match=rf"^{path}:2: bad JSON") as info:
        tb.prepare_jsonl(tmp_path / "data", manual, name="strict", on_error="raise")
    assert info.value.line == 2
    with pytest.raises(FileNotFoundError, match="'jsonl_math/strict' is not prepared"):
        tb.load_source("jsonl_math/strict", tmp_path / "data", "train")


@pytest.mark.parametrize("row, expected", [
    (GSM8K, (GSM8K["question"], "1,203")),
    (MATH, (MATH["problem"], "\\frac{3}{4}")),
    (DEEPSCALER, (DEEPSCALER["problem"], "\\sqrt{2}")),  # 'answer' before 'solution'
    ({"problem": "p", "answer": " 7 "}, ("p", "7")),
    ({"problem": "p", "answer": 0.5}, ("p", "0.5")),
    ({"problem": "p", "answer": "so \\boxed{\\{1,2\\}}"}, ("p", "\\{1,2\\}")),
    ({"problem": "p", "answer": "", "solution": "\\boxed{3}"}, ("p", "3")),  # empty answer
    ({"problem": "p", "question": "q", "answer": "1"}, ("p", "1")),
])
def test_parse_math_row(row, expected):
    assert tb.parse_math_row(row) == expected


@pytest.mark.parametrize("row, message", [
    ({"problem": "p", "answer": True}, "must be a string or a number"),
    ({"problem": "p", "solution": 3}, "'solution' must be a string"),
    ({"problem": 3, "answer": "1"}, "'problem' must be a non-empty string"),
    ({"problem": "p", "answer": "  "}, "no final answer"),
    ("just a string", "must be a JSON object, got str"),
])
def test_parse_math_row_rejects(row, message):
    with pytest.raises(ValueError, match=message):
        tb.parse_math_row(row)


def test_jsonl_config_and_manual_dir_errors(tmp_path):
    with pytest.raises(ValueError, match=r"on_error must be one of \('skip', 'raise'\), got 'x'"):
        tb.JsonlMathConfig(name="bad", on_error="x")
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "validation.jsonl", [GSM8K])
    with pytest.raises(ValueError, match="no train.jsonl or test.jsonl in the manual_dir"):
        tb.prepare_jsonl(tmp_path / "data", manual, name="empty")


def test_source_indexing_and_errors(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", [GSM8K, MATH, DEEPSCALER])
    tb.prepare_jsonl(tmp_path, manual)  # the default name
    source = tb.load_source("jsonl_math/default", tmp_path, "train")
    assert len(source) == 3
    assert source[-1] == source[2] and source[-1]["prompt"] == DEEPSCALER["problem"]
    assert [ex["prompt"] for ex in source] == [r[k] for r, k in (
        (GSM8K, "question"), (MATH, "problem"), (DEEPSCALER, "problem"))]
    with pytest.raises(IndexError, match="index 3 is out of range for a split of 3"):
        source[3]
    with pytest.raises(IndexError):
        source[-4]
    assert len(tb.load_source("jsonl_math/default", tmp_path, "train[1:]")) == 2
    with pytest.raises(ValueError, match=r"Unknown split 'test'. Should be one of \['train'\]"):
        tb.load_source("jsonl_math/default", tmp_path, "test")
    for name in ("embedded_tasks/sort-d1", "embedded_tasks/sort-d1-train5", "no_such_dataset"):
        with pytest.raises(FileNotFoundError, match="is not prepared under"):
            tb.load_source(name, tmp_path, "train")
