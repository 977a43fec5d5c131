"""Sample completions from a model: a tiny random one by default, or an HF checkpoint.

    python -m jaxrl.main --config=configs/generate.py --workdir=/tmp/gen
    python -m jaxrl.main --config=configs/generate.py:model=qwen2_0p5b --workdir=/tmp/gen
    python -m jaxrl.main --config=configs/generate.py --config.model.path=/ckpt/Qwen2.5-0.5B \
        --config.sampling.temperature=0.7 --workdir=/tmp/gen
"""
import pathlib

import ml_collections

from jaxrl.config_utils import load_config_file, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, model="tiny")
    c = ml_collections.ConfigDict()
    c.job = "generate"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = arg.model  # random weights of this shape, unless path is set
    c.model.path = ""  # an HF checkpoint directory (config.json + safetensors + tokenizer.json)
    c.model.dtype = "bfloat16"  # activations
    c.model.param_dtype = "bfloat16"
    c.model.vocab_size = 0  # 0 = the tokenizer's
    # Attention of the forwards over their own tokens (update, SFT, prefill): reference |
    # xla | cudnn (GPU, bf16/fp16; raises elsewhere) | auto (cudnn where it applies, else
    # reference). Not bit-identical to reference (jaxrl/models/attention.py).
    c.model.prefill_attention = "reference"
    # Scan the layers (one compiled layer run L times) instead of unrolling them: compiles
    # grow little with depth; not bit-identical to unrolled (jaxrl/models/decoder.py).
    c.model.scan_layers = False
    c.model.remat = False  # no effect here: this job takes no gradients

    c.prompts = ("12+7=", "Countdown: reach 24 with 3 4 6 8.", "The quick brown fox")
    c.num_samples = 2  # completions per prompt

    c.sampling = ml_collections.ConfigDict()
    c.sampling.max_new_tokens = 64
    c.sampling.temperature = 1.0
    c.sampling.top_k = 0
    c.sampling.top_p = 1.0

    c.update(load_config_file(str(pathlib.Path(__file__).with_name("scale.py"))))
    return c
