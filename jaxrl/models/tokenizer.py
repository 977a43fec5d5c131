"""Tokenizers: the protocol the rest of jaxrl uses, a HF `tokenizer.json` wrapper, and a
built-in character tokenizer for the embedded tasks (no files needed).

    tok = HFTokenizer.from_dir("/ckpt/Qwen2.5-0.5B-Instruct")
    ids = tok.encode(prompt); text = tok.decode(ids); stop = tok.eos_ids
"""
from __future__ import annotations

import json
import pathlib
import string
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import tokenizers


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    eos_ids: tuple[int, ...]  # generation stops at any of them
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _token_content(token) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as an AddedToken dict."""
    return token["content"] if isinstance(token, dict) else token


def _as_ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(i) for i in value) if isinstance(value, list) else (int(value),)


class HFTokenizer:
    """A `tokenizers` tokenizer.json with the special ids that generation needs."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, eos_ids: Sequence[int], pad_id: int):
        if not eos_ids:
            raise ValueError("HFTokenizer needs at least one eos id")
        self._tokenizer = tokenizer
        self.eos_ids = tuple(eos_ids)
        self.pad_id = pad_id
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, path: str | pathlib.Path) -> "HFTokenizer":
        """Reads tokenizer.json, and special tokens from tokenizer_config.json.

        EOS ids come from generation_config.json (what HF `generate` stops on, often several
        ids for chat models), else config.json, else tokenizer_config.json's eos_token. With no
        pad token anywhere (Llama-3), padding uses the first eos id: pads are masked anyway.
        """
        path = pathlib.Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            where = "" if path.is_dir() else " (the directory does not exist)"
            raise FileNotFoundError(f"no tokenizer.json in {path}{where}: a HF tokenizer "
                                    "directory holds tokenizer.json, from tokenizers or "
                                    "transformers' save_pretrained")
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception that names no file
            raise ValueError(f"{file} does not load as a tokenizers tokenizer.json: {e}") from e
        tok_config = _read_json(path / "tokenizer_config.json")
        generation = _read_json(path / "generation_config.json")
        model = _read_json(path / "config.json")

        def token_id(key: str) -> int | None:
            content = _token_content(tok_config.get(key))
            if content is None:
                return None
            token = tokenizer.token_to_id(content)
            if token is None:
                raise ValueError(f"tokenizer_config.json {key}={content!r} is not in "
                                 f"{path / 'tokenizer.json'}")
            return token

        eos_ids = (_as_ids(generation.get("eos_token_id")) or _as_ids(model.get("eos_token_id"))
                   or _as_ids(token_id("eos_token")))
        if not eos_ids:
            raise ValueError(f"no eos token in {path}: looked for eos_token_id in "
                             "generation_config.json and config.json, eos_token in "
                             "tokenizer_config.json")
        pads = (token_id("pad_token"), generation.get("pad_token_id"), model.get("pad_token_id"))
        pad_id = next((int(p) for p in pads if p is not None), eos_ids[0])
        return cls(tokenizer, eos_ids, pad_id)

    def encode(self, text: str) -> list[int]:
        """Special tokens are not added: prompts carry their own (e.g. from a chat template),
        so BOS is never doubled. Special-token strings in `text` map to their ids."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Keeps special tokens, so decode(encode(text)) == text for byte-level tokenizers."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)


class CharTokenizer:
    """One id per character of a fixed alphabet; 0 = pad, 1 = bos, 2 = eos."""

    ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
    pad_id = 0
    bos_id = 1
    eos_ids = (2,)
    _FIRST_CHAR_ID = 3
    vocab_size = _FIRST_CHAR_ID + len(ALPHABET)
    _ID_OF = dict(zip(ALPHABET, range(_FIRST_CHAR_ID, vocab_size)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ID_OF[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in CharTokenizer's alphabet: "
                             "digits, ASCII letters, ASCII punctuation, space, newline") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Special ids have no characters and are dropped."""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad} are outside CharTokenizer's vocab [0, {self.vocab_size})")
        return "".join(self.ALPHABET[i - self._FIRST_CHAR_ID] for i in ids
                       if i >= self._FIRST_CHAR_ID)
