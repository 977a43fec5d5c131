"""The one place a job gets its policy: an HF checkpoint with its tokenizer, or random
weights of a preset shape on the character tokenizer (`config.model`)."""
from __future__ import annotations

import dataclasses
import json
import os

import jax

from jaxrl.config_utils import at_least, one_of
from jaxrl.models import hf
from jaxrl.models.attention import PREFILL_IMPLS
from jaxrl.models.config import PRESETS, preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.tokenizer import CharTokenizer, HFTokenizer, Tokenizer

DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """`config.model`: `path` (an HF checkpoint directory) or, when '', a random init of
    `preset` over the character tokenizer; params in `param_dtype`, activations in `dtype`.
    `vocab_size` 0 = the tokenizer's (a preset's real vocab gives its real costs: bench/).
    `prefill_attention`, `scan_layers` and `remat` are the Decoder's (models/decoder.py)."""

    preset: str
    path: str
    dtype: str
    param_dtype: str
    vocab_size: int
    prefill_attention: str
    scan_layers: bool
    remat: bool

    def __post_init__(self):
        one_of("config.model.dtype", self.dtype, DTYPES)
        one_of("config.model.param_dtype", self.param_dtype, DTYPES)
        at_least("config.model.vocab_size", self.vocab_size, 0)
        one_of("config.model.prefill_attention", self.prefill_attention, PREFILL_IMPLS)
        if self.path:
            if not os.path.isfile(os.path.join(self.path, hf.CONFIG_FILE)):
                raise ValueError(f"config.model.path={self.path!r} has no {hf.CONFIG_FILE}")
        else:
            one_of("config.model.preset", self.preset, sorted(PRESETS))

    def max_positions(self) -> int:
        """The model's max_position_embeddings, read without loading weights."""
        if not self.path:
            return PRESETS[self.preset].max_position_embeddings
        with open(os.path.join(self.path, hf.CONFIG_FILE)) as f:
            return hf.config_from_hf(json.load(f)).max_position_embeddings


def load(source: ModelSource, seed: int, *,
         attention_impl: str = "reference") -> tuple[Decoder, dict, Tokenizer]:
    """(model, params, tokenizer); random params come from `seed`."""
    if source.path:
        model, params = hf.load(source.path, dtype=source.param_dtype)
        cfg = dataclasses.replace(model.cfg, dtype=source.dtype)
        tokenizer = HFTokenizer.from_dir(source.path)
    else:
        tokenizer = CharTokenizer()
        cfg = preset(source.preset, vocab_size=source.vocab_size or tokenizer.vocab_size,
                     dtype=source.dtype, param_dtype=source.param_dtype)
        params = init_params(cfg, jax.random.key(seed))
    return (Decoder(cfg, attention_impl=attention_impl,
                    prefill_attention=source.prefill_attention,
                    scan_layers=source.scan_layers, remat=source.remat), params, tokenizer)
