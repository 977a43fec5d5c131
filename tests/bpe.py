"""A byte-level BPE tokenizer (GPT-2 / Qwen style) trained here on a small corpus: tests
need a real subword tokenizer and cannot download one."""
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers


def train_bpe(corpus: list[str], special_tokens: list[str], vocab_size: int = 300):
    """The tokenizer, its special tokens at ids 0, 1, ... in the order given."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer
