"""Entry point: `python -m jaxrl.main --config=configs/generate.py --workdir=DIR`.

Jobs: `train` (SFT warm-up then GRPO on an embedded task: configs/grpo.py, configs/sft.py)
and `generate` (sample completions from a model and report tokens/s: configs/generate.py).
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrl import sharding
from jaxrl.models import hf
from jaxrl.models.config import PRESETS, preset
from jaxrl.models.decoder import Decoder, init_params, param_axes
from jaxrl.models.tokenizer import CharTokenizer, HFTokenizer
from jaxrl.rl import train
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams
from jaxrl.tasks.batches import pad_rows

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file (optionally :arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where outputs (and later checkpoints) go.")
flags.mark_flags_as_required(["config", "workdir"])

JOBS = ("train", "generate")


def validate(config) -> None:
    """Fails before any compile, naming the bad field and what is allowed."""
    if config.job not in JOBS:
        raise ValueError(f"config.job={config.job!r}; valid: {JOBS}")
    if config.job == "train":
        train.validate(config)
        return
    if not config.model.path and config.model.preset not in PRESETS:
        raise ValueError(f"config.model.preset={config.model.preset!r}; valid: {sorted(PRESETS)} "
                         "(or set config.model.path to an HF checkpoint directory)")
    if config.model.path and not os.path.isfile(os.path.join(config.model.path, "config.json")):
        raise ValueError(f"config.model.path={config.model.path!r} has no config.json")
    if config.model.dtype not in ("bfloat16", "float32"):
        raise ValueError(f"config.model.dtype={config.model.dtype!r}; valid: bfloat16, float32")
    if not config.prompts or not all(isinstance(p, str) and p for p in config.prompts):
        raise ValueError(f"config.prompts must be non-empty strings, got {config.prompts!r}")
    if config.num_samples < 1:
        raise ValueError(f"config.num_samples must be >= 1, got {config.num_samples}")
    if config.sampling.max_new_tokens < 1:
        raise ValueError(f"config.sampling.max_new_tokens must be >= 1, "
                         f"got {config.sampling.max_new_tokens}")
    # SamplingParams.make checks temperature, top_k and top_p with their own messages.
    SamplingParams.make(1, config.sampling.temperature, config.sampling.top_k, config.sampling.top_p)


def load_model(model_config, seed: int):
    """(model, params, tokenizer) from an HF directory, or random weights of a preset shape."""
    if model_config.path:
        model, params = hf.load(model_config.path, dtype=model_config.dtype)
        return model, params, HFTokenizer.from_dir(model_config.path)
    # A random model speaks the character tokenizer, so its vocab is that tokenizer's.
    tokenizer = CharTokenizer()
    cfg = preset(model_config.preset, vocab_size=tokenizer.vocab_size, dtype=model_config.dtype,
                 param_dtype=model_config.dtype)
    return Decoder(cfg), init_params(cfg, jax.random.key(seed)), tokenizer


def run_generate(config, workdir: str) -> dict:
    model, params, tok = load_model(config.model, config.seed)
    mesh = sharding.make_mesh(config.mesh)
    params = sharding.shard_params(params, param_axes(model.cfg), mesh)

    prompts = [tok.encode(p) for p in config.prompts for _ in range(config.num_samples)]
    b, ways = len(prompts), mesh.shape["data"] * mesh.shape["fsdp"]
    rows = -(-b // ways) * ways  # pad the batch with one-token rows to split evenly
    prompts_BL, lengths_B = pad_rows(prompts + [[tok.pad_id]] * (rows - b),
                                     max(map(len, prompts)), tok.pad_id)
    batch = sharding.shard_batch((prompts_BL, lengths_B, np.arange(rows, dtype=np.int32)), mesh)
    s = config.sampling
    sp = SamplingParams.make(rows, s.temperature, s.top_k, s.top_p)
    run = lambda: generate(model, params, *batch, jax.random.key(config.seed), sp,  # noqa: E731
                           max_new_tokens=s.max_new_tokens, stop_tokens=tuple(tok.eos_ids),
                           pad_id=tok.pad_id)
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(run())
    seconds = time.perf_counter() - t0

    tokens_BN, lengths = np.asarray(out.tokens_BN), np.asarray(out.lengths_B)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "samples.jsonl"), "w") as f:
        for i in range(b):
            text = tok.decode(tokens_BN[i, :lengths[i]].tolist())
            prompt = config.prompts[i // config.num_samples]
            print(f"--- [{i}] {prompt!r} -> {text!r}")
            f.write(json.dumps({"prompt": prompt, "completion": text,
                                "tokens": tokens_BN[i, :lengths[i]].tolist()}) + "\n")
    generated = int(lengths[:b].sum())
    summary = {"rows": b, "generated_tokens": generated, "seconds": seconds,
               "tokens_per_second": generated / seconds, "first_call_seconds": compile_s,
               "device": jax.devices()[0].device_kind}
    print(f"{generated} tokens in {seconds:.3f}s = {generated / seconds:.1f} tokens/s "
          f"({b} rows on {summary['device']}; first call with compile {compile_s:.1f}s)")
    return summary


def main(argv):
    del argv
    config = flags.FLAGS.config
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    validate(config)
    logging.info("config:\n%s", config)
    if config.job == "train":
        train.run(config, flags.FLAGS.workdir)
    else:
        run_generate(config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
