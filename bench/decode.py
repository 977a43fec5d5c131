"""Decode throughput of `jaxrl.rollout.decode.generate` against the HBM roofline and HF transformers.

    python -m bench.decode --models qwen2_0p5b,qwen2_1p5b --batches 1,16,64,256,512 \
        --prompt-len 512 --new-tokens 512 --out results.json

For each model preset (random bf16 weights) and batch size, every row gets exactly
`--prompt-len` random prompt tokens and samples exactly `--new-tokens` tokens (temperature 1,
no top-k/top-p, no stop tokens). One run compiles and warms up, then `--reps` runs are
timed (the best is used). A second program with `max_new_tokens=1` times the prefill, so
decode time = total - prefill, covering the remaining N-1 steps.

The same run measures the GPU's HBM bandwidth (`bench.common.hbm_bandwidth`: the device time
of a read-only max and of an `x + 1` copy over `--bw-gib` GiB of bf16, the larger figure
used) and compares each step time with two floors:
  ideal: weights + the KV cache of the average valid length (prompt + N/2) per row;
  dense: weights + the whole cache (prompt + N slots), which is what `attend` reads now.

The baseline is HF transformers' `generate` with a static cache (auto `torch.compile` on
CUDA, as HF does by default) on the same architecture, run in a child process (see
`HFWorker`). Results go to `--out` as JSON after every measurement, so a killed run keeps
what it finished; a markdown table is printed at the end.

Local smoke test (CPU):
    python -m bench.decode --models tiny --batches 1,2 --prompt-len 8 --new-tokens 8 --reps 1
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

# JAX reserves 75% of GPU memory on first use by default. The HF baseline shares the GPU
# (from a child process), so JAX must grow its pool on demand instead. JAX does not hand
# freed memory back to the driver, so the child gets what JAX's largest config left over
# (at least the 25% that XLA_PYTHON_CLIENT_MEM_FRACTION keeps back); OOM there is recorded.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from bench import common  # noqa: E402  (imports no JAX: the HF child imports it too)

HF_WARMUP_TOKENS = 16  # enough decode steps for torch.compile and CUDA-graph capture


def log(msg: str) -> None:
    print(f"[decode-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=common.csv(str), default=["qwen2_0p5b", "qwen2_1p5b"],
                   help="comma-separated presets from jaxrl.models.config.PRESETS")
    p.add_argument("--batches", type=common.csv(int), default=[1, 16, 64, 256, 512])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=2, help="timed runs per measurement (best is used)")
    p.add_argument("--hf-reps", type=int, default=None, help="timed HF runs (default: --reps)")
    p.add_argument("--hf-max-batch", type=int, default=256,
                   help="larger batches are not run on HF (recorded as skipped)")
    p.add_argument("--hf-compile", choices=("auto", "off"), default="auto",
                   help="auto: HF's default for a static cache (torch.compile on CUDA); "
                        "off: generation_config.disable_compile")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--no-prefill", action="store_true",
                   help="skip the separate prefill timing (saves one compile per config); "
                        "decode figures then include the prefill")
    p.add_argument("--bw-gib", type=float, default=None,
                   help="size of the bandwidth probe array (default 4 GiB on GPU, 1/16 on CPU)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="start no new measurement after this many seconds (0: no limit); "
                        "the ones not started are recorded as skipped")
    p.add_argument("--scan-layers", type=int, default=0,
                   help="1: the Decoder scans its layers (models/decoder.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="decode_bench.json")
    p.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hf_worker:
        return args
    if min(args.batches) < 1:
        raise SystemExit(f"--batches={args.batches}: expected positive integers")
    if args.prompt_len < 1:
        raise SystemExit(f"--prompt-len={args.prompt_len}: must be >= 1")
    if args.new_tokens < 2:
        raise SystemExit(f"--new-tokens={args.new_tokens}: must be >= 2 (decode time is "
                         "total minus prefill, over new_tokens - 1 steps)")
    if args.reps < 1:
        raise SystemExit(f"--reps={args.reps}: must be >= 1")
    args.hf_reps = args.reps if args.hf_reps is None else args.hf_reps
    if args.hf_reps < 1:
        raise SystemExit(f"--hf-reps={args.hf_reps}: must be >= 1")
    return args


# --------------------------------------------------------------------------------------
# HF baseline, in a child process.
#
# Why a child: torch and JAX in one process would share one CUDA context, so a sticky CUDA
# error or a segfault on either side would lose the other's results; torch.compile also
# forks compile workers, which is unsafe after JAX has started its threads; and the child's
# memory (the caching allocator, CUDA-graph pools) is all returned when it exits. The child
# speaks one JSON object per line on its stdout; everything else it prints goes to stderr.
# --------------------------------------------------------------------------------------

def _hf_model(shape: dict, device: str, seed: int):
    import torch
    import transformers

    common = dict(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                  intermediate_size=shape["intermediate_size"],
                  num_hidden_layers=shape["num_layers"], num_attention_heads=shape["num_heads"],
                  num_key_value_heads=shape["num_kv_heads"], head_dim=shape["head_dim"],
                  rms_norm_eps=shape["rms_norm_eps"],
                  tie_word_embeddings=shape["tie_word_embeddings"],
                  max_position_embeddings=shape["max_position_embeddings"],
                  bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  attn_implementation="sdpa")
    # RoPE theta/scaling are left at HF defaults: they do not change the cost of a step.
    if shape["qk_norm"]:
        if shape["qkv_bias"]:
            raise ValueError("no HF architecture has both qk_norm and qkv_bias; use --skip-hf")
        config_cls, model_cls = transformers.Qwen3Config, transformers.Qwen3ForCausalLM
        common.update(attention_bias=False)
    elif shape["qkv_bias"]:
        config_cls, model_cls = transformers.Qwen2Config, transformers.Qwen2ForCausalLM
        common.update(use_sliding_window=False)
    else:
        config_cls, model_cls = transformers.LlamaConfig, transformers.LlamaForCausalLM
        common.update(attention_bias=False, mlp_bias=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(config_cls(**common))
    return model.to(torch.bfloat16).eval()


def _hf_measure(model, req: dict, device: str) -> dict:
    import torch

    b, p, n, reps = req["batch"], req["prompt_len"], req["new_tokens"], req["reps"]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(req["seed"])
    input_ids = torch.randint(0, model.config.vocab_size, (b, p), device=device, generator=gen)
    kwargs = dict(attention_mask=torch.ones_like(input_ids), do_sample=True, temperature=1.0,
                  top_k=0, top_p=1.0, cache_implementation="static",
                  # One cache length for every call, so the short warm-up below compiles and
                  # captures exactly the shapes that the timed runs use.
                  max_cache_len=p + n,
                  eos_token_id=None, pad_token_id=0, disable_compile=not req["compile"])

    def run(new_tokens: int) -> float:
        sync()
        t0 = time.perf_counter()
        out = model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             **kwargs)
        sync()
        dt = time.perf_counter() - t0
        if out.shape != (b, p + new_tokens):
            raise RuntimeError(f"HF generate returned shape {tuple(out.shape)}; "
                               f"expected {(b, p + new_tokens)} (stopped early?)")
        return dt

    res = {"status": "ok"}
    res["warmup_s"] = run(min(n, HF_WARMUP_TOKENS))
    if req["prefill"]:
        run(1)
        res["prefill_times_s"] = [run(1) for _ in range(reps)]
    res["total_times_s"] = [run(n) for _ in range(reps)]
    if device == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def hf_worker_main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library and C-level prints go to stderr, never into the protocol

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    send({"torch": torch.__version__, "transformers": transformers.__version__,
          "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"})
    model, model_name = None, None

    def release():
        nonlocal model, model_name
        model, model_name = None, None
        torch._dynamo.reset()  # drops compiled graphs and their CUDA-graph pools
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "release":
            release()
            send({"status": "ok"})
            continue
        try:
            if model_name != req["model"]:
                release()
                model = _hf_model(req["shape"], device, req["seed"])
                model_name = req["model"]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            res = _hf_measure(model, req, device)
            res["num_params"] = sum(x.numel() for x in model.parameters())
        except torch.cuda.OutOfMemoryError as e:
            res = {"status": "oom", "error": str(e).splitlines()[0][:300]}
        except Exception as e:  # recorded in the results; the next config still runs
            res = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        send(res)


class HFWorker:
    """The parent's handle on the child; restarts it if it died on an earlier config."""

    def __init__(self):
        self.proc = None
        self.info: dict | None = None

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            raise RuntimeError(f"HF worker exited with code {rc}")
        return json.loads(line)

    def call(self, req: dict) -> dict:
        try:
            if self.proc is None:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.decode", "--hf-worker"], cwd=common.ROOT,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self.info = self._recv()
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            return self._recv()
        except (RuntimeError, BrokenPipeError, ValueError) as e:  # ValueError: a garbled reply
            return {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
            self.proc = None


# --------------------------------------------------------------------------------------
# jaxrl side (parent process).
# --------------------------------------------------------------------------------------

def measure_ours(cfg, params, batch: int, prompt_len: int, new_tokens: int, reps: int,
                 prefill: bool, seed: int, scan_layers: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrl.models.decoder import Decoder
    from jaxrl.rollout.decode import generate
    from jaxrl.rollout.sampling import SamplingParams

    model = Decoder(cfg, scan_layers=scan_layers)
    rng = np.random.default_rng(seed)
    prompts_BL = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
    lengths_B = jnp.full((batch,), prompt_len, jnp.int32)
    uids_B = jnp.arange(batch, dtype=jnp.int32)
    key = jax.random.key(seed)
    sampling = SamplingParams.make(batch, temperature=1.0)

    run = lambda n: generate(model, params, prompts_BL, lengths_B, uids_B, key,  # noqa: E731
                             sampling, max_new_tokens=n)
    res = {"status": "ok"}
    t0 = time.perf_counter()
    min_len = int(np.asarray(jax.block_until_ready(run(new_tokens)).lengths_B).min())
    res["warmup_s"] = time.perf_counter() - t0  # compile + first run
    if min_len != new_tokens:
        raise RuntimeError(f"a row generated {min_len} < {new_tokens} tokens")
    res["total_times_s"] = common.time_calls(run, reps, warmup=0, inputs=[(new_tokens,)])
    if prefill:
        res["prefill_warmup_s"], *res["prefill_times_s"] = common.time_calls(
            run, reps + 1, warmup=0, inputs=[(1,)])
    if common.peak_memory_gib() is not None:
        res["process_peak_mem_gib"] = common.peak_memory_gib()
    return res


def derive(res: dict, batch: int, new_tokens: int) -> None:
    """Adds the figures the table shows (from the best of the timed runs)."""
    if res.get("status") != "ok":
        return
    total = min(res["total_times_s"])
    prefill = min(res["prefill_times_s"]) if "prefill_times_s" in res else 0.0
    decode = total - prefill
    steps = new_tokens - 1 if "prefill_times_s" in res else new_tokens
    res.update(total_s=total, prefill_s=prefill, decode_s=decode,
               e2e_tokens_per_s=batch * new_tokens / total)
    if decode > 0:
        res.update(step_ms=decode / steps * 1e3, decode_tokens_per_s=batch * steps / decode)


def roofline(cfg, weight_bytes: int, batch: int, prompt_len: int, new_tokens: int,
             gbps: float) -> dict:
    import jax.numpy as jnp

    # Keys and values, every layer, in the cache dtype (init_cache uses cfg.dtype).
    itemsize = jnp.dtype(cfg.jnp_dtype).itemsize
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    ideal = weight_bytes + batch * (prompt_len + new_tokens / 2) * kv_per_token
    dense = weight_bytes + batch * (prompt_len + new_tokens) * kv_per_token
    return {"weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token,
            "ideal_bytes_per_step": ideal, "dense_bytes_per_step": dense,
            "ideal_step_ms": ideal / (gbps * 1e9) * 1e3, "dense_step_ms": dense / (gbps * 1e9) * 1e3}


def add_roofline_fractions(res: dict, roof: dict) -> None:
    """Floor step time / measured step time: 1.0 means at the bandwidth roofline."""
    if res.get("step_ms"):
        res["roofline_ideal_frac"] = roof["ideal_step_ms"] / res["step_ms"]
        res["roofline_dense_frac"] = roof["dense_step_ms"] / res["step_ms"]


def summary(res: dict, roof: dict) -> str:
    """One progress line for a measurement."""
    if res.get("status") != "ok":
        return f"{res.get('status')}: {res.get('error', res.get('reason', ''))}"
    return (f"total {res['total_s']:.3f}s, prefill {res['prefill_s']:.3f}s -> "
            f"{res.get('decode_tokens_per_s', 0):,.0f} tok/s, {res.get('step_ms', 0):.2f} ms/step "
            f"(floors: ideal {roof['ideal_step_ms']:.2f} ms = {res.get('roofline_ideal_frac', 0):.0%}, "
            f"dense {roof['dense_step_ms']:.2f} ms = {res.get('roofline_dense_frac', 0):.0%}); "
            f"warm-up (with compile) {res['warmup_s']:.1f}s")


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(results: list[dict]) -> str:
    head = ("| model | batch | ours tok/s | ours ms/step | % roofline (ideal) | % roofline (dense) "
            "| HF tok/s | HF ms/step | speedup (decode) | speedup (end to end) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ours, hf = r.get("ours", {}), r.get("hf", {})
        pct = lambda key: ours[key] * 100 if key in ours else None  # noqa: E731
        cell = lambda res, x, spec: (_fmt(x, spec) if res.get("status") == "ok"  # noqa: E731
                                     else res.get("status", "-"))
        speed = lambda key: ours[key] / hf[key] if ours.get(key) and hf.get(key) else None  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['batch']} | {cell(ours, ours.get('decode_tokens_per_s'), ',.0f')} "
            f"| {cell(ours, ours.get('step_ms'), '.2f')} | {_fmt(pct('roofline_ideal_frac'), '.0f')} "
            f"| {_fmt(pct('roofline_dense_frac'), '.0f')} "
            f"| {cell(hf, hf.get('decode_tokens_per_s'), ',.0f')} "
            f"| {cell(hf, hf.get('step_ms'), '.2f')} | {_fmt(speed('decode_tokens_per_s'), '.2f')} "
            f"| {_fmt(speed('e2e_tokens_per_s'), '.2f')} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from jaxrl.models.config import PRESETS, preset
    from jaxrl.models.decoder import init_params

    for name in args.models:
        if name not in PRESETS:
            raise SystemExit(f"--models: unknown preset {name!r}; valid: {sorted(PRESETS)}")

    start = time.perf_counter()
    info = common.run_info("decode", sys.argv[1:], "torch", "transformers")
    info["device"]["torch"] = None  # the HF child's device, once it has said
    report = {
        **info,
        "settings": {k: v for k, v in vars(args).items() if k != "hf_worker"},
        "sampling": "temperature 1.0, top_k 0, top_p 1.0, no stop tokens",
        "definitions": {
            "prefill_s": "best generate(max_new_tokens=1): prefill and the first sample",
            "decode_s": "best total_s - best prefill_s, over new_tokens - 1 steps",
            "ideal_bytes_per_step": "weight bytes + batch * (prompt_len + new_tokens/2) * KV bytes/token",
            "dense_bytes_per_step": "weight bytes + batch * (prompt_len + new_tokens) * KV bytes/token",
            "roofline_*_frac": "(bytes per step / hbm.gbps) / measured step time",
        },
        "results": [],
    }
    log(f"device {info['device']['kind']} ({info['device']['platform']}); writing {args.out}")

    bw = report["hbm"] = common.hbm_bandwidth(common.probe_gib(args.bw_gib))
    gbps = bw["gbps"]
    log(f"bandwidth: copy {bw['copy_gbps']:.0f} GB/s (read+write), read {bw['read_gbps']:.0f} GB/s "
        f"over {bw['array_bytes'] / 2**30:.2f} GiB; roofline uses {gbps:.0f} GB/s")
    common.write_json(args.out, report)

    hf = None if args.skip_hf else HFWorker()
    def over_budget() -> bool:
        return args.budget_s > 0 and time.perf_counter() - start > args.budget_s

    skipped = {"status": "skipped", "reason": f"past --budget-s={args.budget_s}"}
    p_len, n_new = args.prompt_len, args.new_tokens

    for name in args.models:
        cfg = preset(name)
        if over_budget():  # not even the weights: the next model would start nothing
            report["results"] += [{"model": name, "batch": b, "ours": dict(skipped),
                                   "hf": dict(skipped)} for b in args.batches]
            common.write_json(args.out, report)
            continue
        params = init_params(cfg, jax.random.key(args.seed))
        params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
        weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
        log(f"{name}: {cfg.num_params() / 1e6:.1f}M params, {weight_bytes / 2**30:.2f} GiB bf16")
        shape = {k: getattr(cfg, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
            "num_kv_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "qkv_bias",
            "qk_norm", "max_position_embeddings")}

        for batch in args.batches:
            entry = {"model": name, "batch": batch, "prompt_len": p_len, "new_tokens": n_new,
                     "num_params": cfg.num_params(),
                     "roofline": roofline(cfg, weight_bytes, batch, p_len, n_new, gbps)}
            report["results"].append(entry)

            if over_budget():
                entry["ours"] = dict(skipped)
            else:
                log(f"{name} B={batch}: jaxrl generate ...")
                try:
                    entry["ours"] = measure_ours(cfg, params, batch, p_len, n_new, args.reps,
                                                 not args.no_prefill, args.seed,
                                                 bool(args.scan_layers))
                except Exception as e:  # e.g. device OOM at a large batch; keep going
                    entry["ours"] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:500]}
                derive(entry["ours"], batch, n_new)
                add_roofline_fractions(entry["ours"], entry["roofline"])
                gc.collect()
                log(f"{name} B={batch}: ours {summary(entry['ours'], entry['roofline'])}")
            common.write_json(args.out, report)

            if hf is None:
                continue
            if batch > args.hf_max_batch:
                entry["hf"] = {"status": "skipped",
                               "reason": f"batch > --hf-max-batch={args.hf_max_batch}"}
            elif over_budget():
                entry["hf"] = dict(skipped)
            else:
                log(f"{name} B={batch}: HF generate (compile={args.hf_compile}) ...")
                entry["hf"] = hf.call({
                    "cmd": "measure", "model": name, "shape": shape, "batch": batch,
                    "prompt_len": p_len, "new_tokens": n_new, "reps": args.hf_reps,
                    "prefill": not args.no_prefill, "compile": args.hf_compile == "auto",
                    "seed": args.seed})
                derive(entry["hf"], batch, n_new)
                add_roofline_fractions(entry["hf"], entry["roofline"])
                h = entry["hf"]
                if hf.info:
                    report["device"]["torch"] = hf.info["device"]
                    report["versions"].update(torch=hf.info["torch"],
                                              transformers=hf.info["transformers"])
                if h["status"] == "ok" and h["num_params"] != cfg.num_params():
                    h["warning"] = f"HF model has {h['num_params']} params, ours {cfg.num_params()}"
                    log(h["warning"])
                log(f"{name} B={batch}: HF {summary(h, entry['roofline'])}")
            common.write_json(args.out, report)

        del params
        jax.clear_caches()
        gc.collect()
        if hf is not None and hf.proc is not None:
            hf.call({"cmd": "release"})

    if hf is not None:
        hf.close()
    report["elapsed_s"] = time.perf_counter() - start
    report["table_markdown"] = table(report["results"])
    common.write_json(args.out, report)
    print()
    print(f"Device: {report['device']['kind']} (torch: {report['device']['torch']}); "
          f"HBM {bw['copy_gbps']:.0f} GB/s copy, {bw['read_gbps']:.0f} GB/s read; "
          f"prompt {p_len}, new {n_new}; {report['date']}")
    print(report["table_markdown"], flush=True)
    log(f"done in {report['elapsed_s']:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    _args = parse_args()
    if _args.hf_worker:
        hf_worker_main()
    else:
        main(_args)
