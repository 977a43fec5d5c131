"""HFTokenizer on a byte-level BPE tokenizer trained here; CharTokenizer."""
import json

import pytest

from bpe import train_bpe
from jaxrl.models.tokenizer import CharTokenizer, HFTokenizer, Tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_end|>"]  # ids 0..3, in trainer order
CORPUS = ["The answer is 42.", "What is 6 times 7?", "Let x = 3; then x + x = 6.",
          "Numbers: 0 1 2 3 4 5 6 7 8 9"] * 10


def _write_tokenizer(path, tokenizer_config=None, generation_config=None, config=None):
    path.mkdir(exist_ok=True)
    tokenizer = train_bpe(CORPUS, SPECIALS)
    tokenizer.save(str(path / "tokenizer.json"))
    for name, content in [("tokenizer_config.json", tokenizer_config),
                          ("generation_config.json", generation_config), ("config.json", config)]:
        if content is not None:
            (path / name).write_text(json.dumps(content))
    return tokenizer


def test_hf_tokenizer_round_trip_and_special_ids(tmp_path):
    reference = _write_tokenizer(
        tmp_path, tokenizer_config={"pad_token": "<pad>", "eos_token": {"content": "</s>"}},
        generation_config={"eos_token_id": [2, 3]}, config={"eos_token_id": 2})
    tok = HFTokenizer.from_dir(tmp_path)
    assert isinstance(tok, Tokenizer)
    assert tok.eos_ids == (2, 3)  # generation_config.json wins over config.json
    assert tok.pad_id == 0
    assert tok.vocab_size == reference.get_vocab_size() > len(SPECIALS) + 256
    text = "What is 6 times 7? The answer is 42.<|im_end|>\nÜnïcödé ok"
    ids = tok.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ids.count(3) == 1  # the special token's text maps to its id, not to pieces
    assert tok.decode(ids) == text


def test_hf_tokenizer_fallbacks(tmp_path):
    # eos only in config.json (an int), no pad token anywhere: pad falls back to eos.
    _write_tokenizer(tmp_path / "a", config={"eos_token_id": 3})
    tok = HFTokenizer.from_dir(tmp_path / "a")
    assert (tok.eos_ids, tok.pad_id) == ((3,), 3)
    # eos only as tokenizer_config.json's eos_token; pad from generation_config.json.
    _write_tokenizer(tmp_path / "b", tokenizer_config={"eos_token": "</s>"},
                     generation_config={"pad_token_id": 1})
    tok = HFTokenizer.from_dir(tmp_path / "b")
    assert (tok.eos_ids, tok.pad_id) == ((2,), 1)


def test_hf_tokenizer_errors(tmp_path):
    _write_tokenizer(tmp_path / "a")
    with pytest.raises(ValueError, match="no eos token"):
        HFTokenizer.from_dir(tmp_path / "a")
    _write_tokenizer(tmp_path / "b", tokenizer_config={"eos_token": "<|endoftext|>"})
    with pytest.raises(ValueError, match=r"eos_token='<\|endoftext\|>' is not in"):
        HFTokenizer.from_dir(tmp_path / "b")


def test_char_tokenizer_round_trip():
    tok = CharTokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_ids) == (0, 1, (2,))
    text = CharTokenizer.ALPHABET + "Q: 12+30=?\nA: 42."
    ids = tok.encode(text)
    assert min(ids) == 3 and max(ids) == tok.vocab_size - 1 == 3 + 94 + 2 - 1
    assert len(set(tok.encode(CharTokenizer.ALPHABET))) == len(CharTokenizer.ALPHABET)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *tok.encode("7"), *tok.eos_ids, tok.pad_id]) == "7"


def test_char_tokenizer_errors():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="character 'é' is not in"):
        tok.encode("café")
    with pytest.raises(ValueError, match=r"ids \[99\] are outside"):
        tok.decode([5, 99])


def test_hf_tokenizer_missing_or_broken_file_is_named(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as info:
        HFTokenizer.from_dir(tmp_path / "model")
    assert str(info.value).startswith(f"no tokenizer.json in {tmp_path / 'model'}: ")
    with pytest.raises(FileNotFoundError,
                       match=f"no tokenizer.json in {tmp_path / 'gone'} .the directory does not"):
        HFTokenizer.from_dir(tmp_path / "gone")
    (tmp_path / "model" / "tokenizer.json").write_text('{"version": "1.0"')
    with pytest.raises(ValueError, match=f"{tmp_path / 'model' / 'tokenizer.json'} does not "
                                         "load as a tokenizers tokenizer.json: "):
        HFTokenizer.from_dir(tmp_path / "model")
