"""The generate job: sample completions from a model (an HF checkpoint, or random weights
of a preset) and report tokens/s; `workdir/samples.jsonl` keeps them."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np

from jaxrl import compilation, sharding
from jaxrl.config_utils import at_least, one_of
from jaxrl.models import loader
from jaxrl.models.decoder import param_axes
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingConfig, SamplingParams
from jaxrl.tasks.batches import pad_rows


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """configs/generate.py, typed."""

    job: str
    seed: int
    model: loader.ModelSource
    prompts: tuple[str, ...]
    num_samples: int
    sampling: SamplingConfig
    mesh: sharding.MeshConfig
    sharding: sharding.ShardingConfig
    distributed: sharding.DistributedConfig
    compile: compilation.CompileConfig

    def __post_init__(self):
        one_of("config.job", self.job, ("generate",))
        at_least("config.seed", self.seed, 0)
        if not self.prompts or not all(self.prompts):
            raise ValueError(f"config.prompts must be non-empty strings, got {self.prompts!r}")
        at_least("config.num_samples", self.num_samples, 1)


CONFIG = GenerateConfig


def run(cfg: GenerateConfig, workdir: str) -> dict:
    compilation.set_up_cache(cfg.compile)
    model, params, tok = loader.load(cfg.model, cfg.seed)
    layout = sharding.make_layout(cfg.mesh, cfg.sharding)
    params = sharding.shard_params(params, param_axes(model.cfg), layout)

    prompts = [tok.encode(p) for p in cfg.prompts for _ in range(cfg.num_samples)]
    s = cfg.sampling
    longest = max(map(len, prompts))
    if longest + s.max_new_tokens > model.cfg.max_position_embeddings:
        raise ValueError(f"the longest prompt ({longest} tokens) plus config.sampling."
                         f"max_new_tokens={s.max_new_tokens} exceeds the model's "
                         f"{model.cfg.max_position_embeddings} positions")
    b, ways = len(prompts), layout.batch_ways
    rows = -(-b // ways) * ways  # pad the batch with one-token rows to split evenly
    prompts_BL, lengths_B = pad_rows(prompts + [[tok.pad_id]] * (rows - b), longest, tok.pad_id)
    batch = sharding.shard_batch((prompts_BL, lengths_B, np.arange(rows, dtype=np.int32)),
                                 layout)
    sp = SamplingParams.make(rows, s.temperature, s.top_k, s.top_p)
    run_once = lambda: generate(model, params, *batch, jax.random.key(cfg.seed), sp,  # noqa: E731
                                max_new_tokens=s.max_new_tokens, stop_tokens=tuple(tok.eos_ids),
                                pad_id=tok.pad_id, layout=layout)
    t0 = time.perf_counter()
    jax.block_until_ready(run_once())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(run_once())
    seconds = time.perf_counter() - t0

    tokens_BN, lengths = np.asarray(out.tokens_BN), np.asarray(out.lengths_B)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "samples.jsonl"), "w") as f:
        for i in range(b):
            text = tok.decode(tokens_BN[i, :lengths[i]].tolist())
            prompt = cfg.prompts[i // cfg.num_samples]
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
