"""The TFDS builder: JSONL datasets written to array_record and read back with a data
source, checked against the rows that made them, with no TensorFlow.
"""
import hashlib
import json
import logging
import sys

import pytest

pytest.importorskip("tensorflow_datasets")

from jaxrl.tasks import math_reward  # noqa: E402
from jaxrl.tasks import tfds_builders as tb  # noqa: E402


def read_all(name, data_dir, split):
    source = tb.load_source(name, data_dir, split)
    return [source[i] for i in range(len(source))]


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
    assert builder.dataset_name == f"jsonl_math/{tb.jsonl_config(manual, 'mix').name}"
    train = read_all(builder.dataset_name, tmp_path / "data", "train")
    assert train == [
        {"prompt": GSM8K["question"], "answer": "1,203"},
        {"prompt": MATH["problem"], "answer": "\\frac{3}{4}"},
        {"prompt": DEEPSCALER["problem"], "answer": "\\sqrt{2}"},
        {"prompt": "1+1?", "answer": "2"},
    ]
    assert read_all(builder.dataset_name, tmp_path / "data", "test") == [
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
    assert read_all(builder.dataset_name, tmp_path / "data", "train") == [
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
    name = f"jsonl_math/{tb.jsonl_config(manual, 'strict').name}"
    with pytest.raises(FileNotFoundError, match=f"'{name}' is not prepared"):
        tb.load_source(name, tmp_path / "data", "train")


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
    name = tb.prepare_jsonl(tmp_path, manual).dataset_name  # the default name
    assert name.startswith("jsonl_math/default-")
    source = tb.load_source(name, tmp_path, "train")
    assert len(source) == 3
    assert source[-1] == source[2] and source[-1]["prompt"] == DEEPSCALER["problem"]
    assert [ex["prompt"] for ex in source] == [r[k] for r, k in (
        (GSM8K, "question"), (MATH, "problem"), (DEEPSCALER, "problem"))]
    with pytest.raises(IndexError, match="index 3 is out of range for a split of 3"):
        source[3]
    with pytest.raises(IndexError):
        source[-4]
    assert len(tb.load_source(name, tmp_path, "train[1:]")) == 2
    with pytest.raises(ValueError, match=r"Unknown split 'test'. Should be one of \['train'\]"):
        tb.load_source(name, tmp_path, "test")
    for name in ("jsonl_math/other-0123456789ab", "no_such_dataset"):
        with pytest.raises(FileNotFoundError, match="is not prepared under"):
            tb.load_source(name, tmp_path, "train")


def test_jsonl_dataset_is_keyed_on_its_files(tmp_path):
    dir_a, dir_b, copy_of_a = (tmp_path / n for n in ("a", "b", "copy_of_a"))
    for d, rows in ((dir_a, [GSM8K, MATH]), (dir_b, [DEEPSCALER]), (copy_of_a, [GSM8K, MATH])):
        d.mkdir()
        write_jsonl(d / "train.jsonl", rows)
    data = tmp_path / "data"
    a = tb.prepare_jsonl(data, dir_a, name="math")
    b = tb.prepare_jsonl(data, dir_b, name="math")  # same data_dir and name, other files
    assert a.dataset_name != b.dataset_name
    assert [r["prompt"] for r in read_all(b.dataset_name, data, "train")] == [
        DEEPSCALER["problem"]]
    assert len(read_all(a.dataset_name, data, "train")) == 2  # A's dataset is still there
    # The name is the content's: the same bytes under another path reuse A's dataset ...
    assert tb.prepare_jsonl(data, copy_of_a, name="math").dataset_name == a.dataset_name
    # ... and it is the sha256 of the files as stated (absent test.jsonl included).
    content = (dir_a / "train.jsonl").read_bytes()
    sha = hashlib.sha256(b"train.jsonl\0" + f"{len(content)}\0".encode() + content
                         + b"test.jsonl\0absent\0").hexdigest()
    assert a.dataset_name == f"jsonl_math/math-{sha[:12]}"
    assert f"sha256 {sha}" in a.builder_config.description
    assert str(dir_a) in a.builder_config.description


@pytest.mark.parametrize("lines, read", [
    ([], 0),  # empty file
    (["", "  ", "\t"], 0),  # blank lines only
    (['{"question": "q"}', "not json", "[1]"], 3),  # every row malformed
])
def test_train_file_with_no_usable_row_is_refused_naming_it(tmp_path, lines, read):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", lines)
    write_jsonl(manual / "test.jsonl", [MATH])
    path = manual / "train.jsonl"
    with pytest.raises(ValueError) as info:
        tb.prepare_jsonl(tmp_path / "data", manual, name="x")
    assert str(info.value) == (f"{path} has no usable row: {read} non-blank rows read, "
                               f"{read} rejected as malformed")


def test_test_file_with_no_usable_row_is_left_out_with_a_warning(tmp_path, caplog):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_jsonl(manual / "train.jsonl", [GSM8K])
    write_jsonl(manual / "test.jsonl", ["oops", ""])
    with caplog.at_level(logging.WARNING):
        builder = tb.prepare_jsonl(tmp_path / "data", manual, name="x")
    assert f"{manual / 'test.jsonl'} has no usable row: 1 non-blank rows read, 1 rejected " \
           "as malformed; the dataset has no test split" in caplog.text
    assert list(builder.info.splits) == ["train"]
    assert read_all(builder.dataset_name, tmp_path / "data", "train") == [
        {"prompt": GSM8K["question"], "answer": "1,203"}]
    # With no train.jsonl, an unusable test.jsonl is all there is: refused.
    (manual / "train.jsonl").unlink()
    with pytest.raises(ValueError, match=r"test.jsonl has no usable row: 1 non-blank rows"):
        tb.prepare_jsonl(tmp_path / "data", manual, name="x")
