r"""GPU figures of the GRPO recipe at a real model size: SFT from scratch, then GRPO steps.

    python -m bench.grpo --preset qwen2_0p5b --task arithmetic --out-dir OUT

The recipe is the training job's: `configs/grpo.py` with this script's sizes as overrides
(`make_config`), built by `jaxrl.jobs.train.build` (model, prompt source, reward, state,
the jitted SFT step), and GRPO steps of `jaxrl.rl.grpo.make_step` split in three jits
(`rl.split_phases`), which times each phase. A random-init policy of the preset's shape
learns an embedded task by SFT on reference solutions, then takes GRPO steps on fresh
problems. The model keeps the preset's real vocabulary (151,936 for Qwen2.5) so that the
embedding, the unembedding and the sampler cost what they cost on a real checkpoint; the
character tokenizer uses its first ids, and the task checkers ignore any id outside them.
Old log-probs come from the sampler (`--old-logprobs`; the config's default recomputes
them with one more forward), as when BENCHMARKS.md's figures were measured.

Needs ml-collections (the configs are ml-collections files), which the GPU image lacks:
bench/__init__.py says how to carry it there.

Numerics: float32 params and AdamW state, bfloat16 activations (`--param-dtype`,
`--dtype`); logits, softmax and losses are float32 in the model code.

What is reported (the JSON in `--out-dir` has every step):
- SFT: tokens/s and MFU, padded and real tokens.
- GRPO, per step: rollout / reward / update seconds (`time/*_s` of the split step),
  generated tokens.
- Means leave out every step during which XLA compiled anything (seen through
  jax.monitoring), so compiles never count as step time; the JSON keeps those steps too.
- Update MFU: training FLOPs of the update phase / update seconds / the device's dense
  bf16 peak. FLOPs = num_epochs * [6 * (body params * tokens + vocab * embed * logit
  positions) + 12 * layers * heads * head_dim * sum(T^2)], with tokens = rows * (prompt_len +
  max_new_tokens) padded, as computed, or only the real prompt and completion tokens. The
  T^2 term counts the dense `[T, T]` scores that `attend` computes (no causal halving).
- Rollout lengths: every completion length of every GRPO step (a histogram PNG, with the
  reference solution lengths of the same prompts for comparison).
- Greedy held-out accuracy after SFT and after GRPO (`--eval-problems 0` skips it).
- `--profile-dir DIR`: after GRPO, one rollout of the final state, then the update phase of
  each packing mode on it, timed and profiled (`common.profile`: kernel groups by time) with
  XLA's own count of the compiled program's FLOPs and bytes (its cost analysis, which on
  the H200 counted 0.16 TFLOP for an unpacked update that does several: kernel times, not
  that count, say what the update is bound by). Under `profile` in the JSON.
- `--packing none,segments`: the first mode trains; before each step, every further mode
  takes the same step (same state, same batch, so the same rollout) on a copy of the state,
  and its update seconds, update MFU (padded and real, the same FLOPs as above: what the
  step has to compute, not what the packed rows compute) and loss are reported beside the
  first mode's. `--pack-rows-frac` is `rl.pack_rows_frac`; `--prefill-attention` is
  `model.prefill_attention` (models/attention.py) for the whole run.

The per-sequence lengths come out of the step itself: the reward is wrapped so that its
metrics also return `lengths_B`, which the split step hands back with its other metrics;
nothing in the library changes and the reward phase gains one [B] int32 output.

`--time-budget-s` stops SFT at half the budget and GRPO at 90% of it; what finished is
written (the JSON is rewritten after each phase, so a killed run keeps what it had).

Local smoke test (CPU):
    python -m bench.grpo --preset tiny --sft-steps 2 --rl-steps 2 --num-prompts 2 \
        --num-generations 4 --num-minibatches 2 --eval-problems 8 --out-dir /tmp/grpo_bench
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from bench import common
from jaxrl.models.config import PRESETS

T_START = time.perf_counter()

# Dense bf16 peak FLOP/s by `device_kind` substring, first match wins (vendor datasheets,
# without sparsity).
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
             ("H800", 989e12), ("GH200", 989e12), ("A100", 312e12))


def log(msg: str) -> None:
    print(f"[grpo-bench {time.perf_counter() - T_START:7.1f}s] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="qwen2_0p5b", choices=sorted(PRESETS))
    p.add_argument("--task", default="arithmetic", choices=("arithmetic", "countdown", "sort"))
    p.add_argument("--difficulty", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=-1,
                   help="-1: the preset's (real costs); 0: the character tokenizer's")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="activations")
    p.add_argument("--param-dtype", default="float32", choices=("bfloat16", "float32"),
                   help="params and optimizer state")
    p.add_argument("--sft-steps", type=int, default=200)
    p.add_argument("--sft-batch", type=int, default=64)
    p.add_argument("--sft-lr", type=float, default=5e-4)
    p.add_argument("--sft-pad", default="full", choices=("full", "bucket"),
                   help="full: pad solutions to the task budget (one compile); bucket: to the "
                        "batch's longest rounded up to 16, as the train job does (a compile "
                        "per bucket)")
    p.add_argument("--rl-steps", type=int, default=10)
    p.add_argument("--rl-lr", type=float, default=5e-5)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--num-minibatches", type=int, default=8,
                   help="update minibatches per epoch; the default keeps 64 rows per minibatch "
                        "as the recipe's 16 x 8 / 2 does, and the [rows, N, 151936] float32 "
                        "logits small")
    p.add_argument("--num-epochs", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=0, help="0: the task's budget")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--old-logprobs", default="sampler", choices=("sampler", "recompute"),
                   help="config.rl.old_logprobs; BENCHMARKS.md's figures used sampler")
    p.add_argument("--eval-problems", type=int, default=256, help="0: no evaluation")
    p.add_argument("--packing", default="none",
                   help="config.rl.packing, or a comma list: the first trains, the others "
                        "take each step on a copy of the state (their update is timed too)")
    p.add_argument("--pack-rows-frac", type=float, default=0.5, help="config.rl.pack_rows_frac")
    p.add_argument("--prefill-attention", default="reference",
                   help="config.model.prefill_attention: reference | xla | cudnn | auto")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="dense bf16 peak for MFU; 0: by device kind (none on unknown devices)")
    p.add_argument("--time-budget-s", type=float, default=480.0,
                   help="SFT stops at half of it and GRPO at 90%% (0: no limit)")
    p.add_argument("--remat", type=int, default=0, help="1: config.model.remat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-dir", default="",
                   help="after GRPO, profile one update of each --packing mode here")
    p.add_argument("--out-dir", default="grpo_bench")
    args = p.parse_args(argv)
    # The RL fields are checked by the typed config (config.rl.*); these have no config field.
    if args.eval_problems < 0:
        raise SystemExit(f"--eval-problems={args.eval_problems}: must be >= 0")
    args.packing = args.packing.split(",")
    if len(set(args.packing)) != len(args.packing):
        raise SystemExit(f"--packing={','.join(args.packing)}: a mode appears twice")
    return args


def make_config(args, vocab_size: int):
    """configs/grpo.py with this benchmark's sizes: fresh problems every step (no pool), the
    step split in three timed jits."""
    arg = (f"task={args.task},difficulty={args.difficulty},model={args.preset},"
           f"sft_steps={args.sft_steps},rl_steps={args.rl_steps}")
    return common.train_config(arg, {
        "seed": args.seed, "task.train_pool": 0,
        "model.vocab_size": vocab_size, "model.dtype": args.dtype,
        "model.param_dtype": args.param_dtype, "optim.warmup_steps": args.warmup_steps,
        "sft.batch_size": args.sft_batch, "sft.learning_rate": args.sft_lr,
        "rl.learning_rate": args.rl_lr, "rl.num_prompts": args.num_prompts,
        "rl.num_generations": args.num_generations, "rl.max_new_tokens": args.max_new_tokens,
        "rl.num_minibatches": args.num_minibatches, "rl.num_epochs": args.num_epochs,
        "rl.old_logprobs": args.old_logprobs, "rl.split_phases": True,
        "rl.packing": args.packing[0], "rl.pack_rows_frac": args.pack_rows_frac,
        "model.prefill_attention": args.prefill_attention, "model.remat": bool(args.remat),
        "eval.num_problems": max(args.eval_problems, 1)})


class LengthsReward:
    """The task reward, whose metrics also carry the per-row completion lengths: the split
    step returns reward metrics as they are, so the lengths reach the host with no extra
    rollout and no change to the step."""

    def __init__(self, reward):
        self.reward, self.is_host = reward, reward.is_host

    def __call__(self, tokens_BN, lengths_B, finished_B, targets_BT):
        rewards_B, metrics = self.reward(tokens_BN, lengths_B, finished_B, targets_BT)
        return rewards_B, {**metrics, "response_lengths": lengths_B}


class CompileClock:
    """XLA backend compile seconds since the last `take()`, from jax.monitoring: a step
    that compiled anything is left out of the means."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        import jax

        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_) -> None:
        if event == self.EVENT:
            self.seconds += duration

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def train_flops(cfg, rows: int, tokens: float, logit_positions: float, sum_t2: float) -> float:
    """Forward + backward FLOPs of `rows` sequences (see the module docstring)."""
    embed = cfg.vocab_size * cfg.hidden_size
    body = cfg.num_params() - embed * (1 if cfg.tie_word_embeddings else 2)
    attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * sum_t2
    return 6 * (body * tokens + embed * logit_positions) + attn


def peak_flops(kind: str, override_tflops: float) -> tuple[float | None, str]:
    if override_tflops > 0:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    for key, peak in PEAK_BF16:
        if key.lower() in kind.lower():
            return peak, f"{key} dense bf16 {peak / 1e12:.0f} TFLOP/s"
    return None, f"unknown device {kind!r}: no MFU (pass --peak-tflops)"


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def packing_row(m: dict, compile_s: float) -> dict:
    """What one packing mode's step reports: its update time, loss and packed fraction."""
    return {"update_s": float(m["time/update_s"]), "compile_s": compile_s,
            "loss": float(m["loss"]),
            "packed_frac": float(m["packing/packed_frac"]) if "packing/packed_frac" in m else None}


def packing_summary(rl_rows: list, modes: list, peak) -> dict:
    """Per packing mode, over the steps in which that mode compiled nothing: mean update
    seconds, and update MFU from the step's FLOPs (padded and real) over those seconds."""
    out = {}
    for mode in modes:
        timed = [r for r in rl_rows if not r["packing"][mode]["compile_s"]]
        upd = sum(r["packing"][mode]["update_s"] for r in timed)
        frac = [r["packing"][mode]["packed_frac"] for r in timed]
        out[mode] = timed and {
            "timed_steps": len(timed), "mean_update_s": upd / len(timed),
            "update_mfu_padded": (sum(r["update_flops_padded"] for r in timed) / upd / peak
                                  if peak else None),
            "update_mfu_real": (sum(r["update_flops_real"] for r in timed) / upd / peak
                                if peak else None),
            "packed_frac": None if None in frac else _mean(frac),
            "mean_loss": _mean([r["packing"][mode]["loss"] for r in timed])}
    return out


def plot_lengths(path: str, lengths_per_step: list, reference: list, budget: int,
                 title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    every = np.concatenate(lengths_per_step)
    bins = np.arange(0.5, budget + 1.5, 1) if budget <= 300 else np.linspace(0.5, budget + 0.5, 101)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax.hist(every, bins=bins, density=True, color="tab:blue", alpha=0.75,
            label=f"GRPO rollouts ({every.size})")
    ax.hist(reference, bins=bins, density=True, histtype="step", color="black", lw=1.2,
            label=f"reference solutions + EOS ({len(reference)})")
    ax.axvline(budget, color="tab:red", ls="--", lw=1, label=f"max_new_tokens = {budget}")
    truncated = float(np.mean(every >= budget))
    ax.set(xlabel="completion length (tokens, EOS included)", ylabel="fraction of sequences",
           title=(f"mean {every.mean():.1f}, p50 {np.percentile(every, 50):.0f}, "
                  f"p90 {np.percentile(every, 90):.0f}, max {every.max()}, "
                  f"at budget {100 * truncated:.1f}%"))
    ax.legend(fontsize=8)
    bx.boxplot(lengths_per_step, whis=(5, 95), showfliers=False)
    bx.plot(range(1, len(lengths_per_step) + 1), [x.mean() for x in lengths_per_step], "o-",
            color="tab:orange", ms=3, label="mean")
    bx.set(xlabel="GRPO step", ylabel="completion length", title="per step (box: quartiles, "
           "whiskers: p5-p95)")
    bx.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrl import sharding
    from jaxrl.jobs import train
    from jaxrl.rl import grpo
    from jaxrl.tasks import batches
    from jaxrl.tasks.base import TOKENIZER

    vocab = PRESETS[args.preset].vocab_size if args.vocab_size < 0 else args.vocab_size
    if vocab and vocab < TOKENIZER.vocab_size:
        raise SystemExit(f"--vocab-size={vocab}: must be 0 or >= the tokenizer's "
                         f"{TOKENIZER.vocab_size}")
    json_path = os.path.join(args.out_dir, "grpo_bench.json")
    png_path = os.path.join(args.out_dir, "rollout_lengths.png")
    budget = args.time_budget_s or float("inf")
    elapsed = lambda: time.perf_counter() - T_START  # noqa: E731

    config = make_config(args, vocab)
    info = common.run_info("grpo", sys.argv[1:])
    peak, peak_note = peak_flops(info["device"]["kind"], args.peak_tflops)
    log(f"device {info['device']['kind']} ({info['device']['platform']}), "
        f"{info['device']['count']} device(s); MFU peak: {peak_note}")

    built = train.build(config, sharding.make_mesh(config.mesh))
    model, source, state = built.model, built.source, built.state
    cfg, task = model.cfg, source.task
    n_new, prompt_len, solution_len = source.max_new_tokens, source.prompt_len, source.solution_len
    tok = source.tokenizer
    rl_steps = {mode: grpo.make_step(model, config.rl.replace(packing=mode), config.rollout,
                                     LengthsReward(built.reward), max_new_tokens=n_new,
                                     stop_tokens=tuple(tok.eos_ids), pad_id=tok.pad_id)
                for mode in args.packing}
    rl_step = rl_steps[args.packing[0]]
    jax.block_until_ready(state)
    log(f"{args.preset}: {cfg.num_params() / 1e6:.1f}M params (vocab {cfg.vocab_size}), params "
        f"{cfg.param_dtype}, activations {cfg.dtype}; task {args.task} d{args.difficulty}: "
        f"prompt_len {prompt_len}, max_new_tokens {n_new}; built in {elapsed():.1f}s")

    report = {
        **info,
        "settings": vars(args),
        "model": {"preset": args.preset, "num_params": cfg.num_params(),
                  "vocab_size": cfg.vocab_size, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype},
        "task": {"name": args.task, "difficulty": args.difficulty, "prompt_len": prompt_len,
                 "solution_len": solution_len, "max_new_tokens": n_new},
        "peak_flops": peak, "peak_note": peak_note,
        "definitions": {
            "flops": "num_epochs * [6 * (body params * tokens + vocab * embed * logit positions) "
                     "+ 12 * layers * heads * head_dim * sum over rows of T^2]",
            "padded": "tokens as computed: rows * (prompt_len + completion budget)",
            "real": "only real prompt and completion tokens (EOS included)",
            "mfu": "flops / seconds / peak_flops",
            "timed steps": "steps during which XLA compiled nothing (jax.monitoring); "
                           "compile_s is the backend compile time inside a step",
        },
        "eval_accuracy": {}, "sft": {"steps": []}, "rl": {"steps": []},
    }
    common.write_json(json_path, report)

    def evaluate(name):
        if not args.eval_problems:
            return
        t0 = time.perf_counter()
        acc = train.evaluate(built, state.params, temperature=0.0)
        report["eval_accuracy"][name] = acc
        log(f"held-out greedy accuracy {name}: {acc:.3f} ({args.eval_problems} problems, "
            f"{time.perf_counter() - t0:.1f}s incl. any compile)")

    # ---- SFT ----
    sft_rows = report["sft"]["steps"]
    compiles = CompileClock()
    for step, b, state, m, seconds in common.sft_steps(
            built, args.sft_steps, args.sft_batch, args.sft_pad != "full"):
        n_sol = b.solutions_PN.shape[1]
        real_t = b.prompt_lengths_P.astype(np.float64) + b.solution_lengths_P
        sft_rows.append({
            "step": step, "seconds": seconds, "compile_s": compiles.take(),
            "solution_len": n_sol, "loss": float(m["sft_loss"]),
            "token_accuracy": float(m["token_accuracy"]),
            "padded_tokens": args.sft_batch * (prompt_len + n_sol),
            "real_tokens": int(real_t.sum()),
            "flops_padded": train_flops(cfg, args.sft_batch, args.sft_batch * (prompt_len + n_sol),
                                        args.sft_batch * n_sol,
                                        args.sft_batch * (prompt_len + n_sol) ** 2),
            "flops_real": train_flops(cfg, args.sft_batch, real_t.sum(),
                                      float(b.solution_lengths_P.sum()),
                                      float((real_t ** 2).sum())),
        })
        if step == 1 or step % max(1, args.sft_steps // 10) == 0 or step == args.sft_steps:
            log(f"SFT step {step}/{args.sft_steps}: loss {m['sft_loss']:.4f}, token acc "
                f"{m['token_accuracy']:.3f}, {seconds:.3f}s"
                + (" (compiles)" if sft_rows[-1]["compile_s"] else ""))
        if step < args.sft_steps and elapsed() > budget / 2:
            log(f"time budget: SFT stopped after {step} of {args.sft_steps} steps; the learning "
                "rate schedule still counts the configured SFT steps")
            report["sft"]["cut_short"] = True
            break
    timed = [r for r in sft_rows if not r["compile_s"]]
    if timed:
        secs = sum(r["seconds"] for r in timed)
        report["sft"]["summary"] = {
            "timed_steps": len(timed), "mean_step_s": secs / len(timed),
            "tokens_per_s_padded": sum(r["padded_tokens"] for r in timed) / secs,
            "tokens_per_s_real": sum(r["real_tokens"] for r in timed) / secs,
            "mfu_padded": sum(r["flops_padded"] for r in timed) / secs / peak if peak else None,
            "mfu_real": sum(r["flops_real"] for r in timed) / secs / peak if peak else None,
            "compile_steps_s": [r["seconds"] for r in sft_rows if r["compile_s"]],
            "final_loss": sft_rows[-1]["loss"]}
    evaluate("after_sft")
    common.write_json(json_path, report)

    # ---- GRPO ----
    rl_rows, lengths_per_step, reference = report["rl"]["steps"], [], []
    n_rows = args.num_prompts * args.num_generations
    for i in range(args.rl_steps):
        if elapsed() > 0.9 * budget:
            log(f"time budget: GRPO stopped after {i} of {args.rl_steps} steps")
            report["rl"]["cut_short"] = True
            break
        batch = source.rl_batch(args.sft_steps + i, args.num_prompts)
        others = {}
        for mode in args.packing[1:]:
            compiles.take()
            _, m_mode = rl_steps[mode](jax.tree.map(jnp.copy, state), *batch)
            others[mode] = packing_row(jax.device_get(m_mode), compiles.take())
        compiles.take()
        t0 = time.perf_counter()
        state, m = rl_step(state, *batch)
        m = jax.device_get(m)
        seconds = time.perf_counter() - t0
        lengths = np.asarray(m.pop("response_lengths"), np.int64)
        lengths_per_step.append(lengths)
        reference += [len(p.solution) + 1 for p in batches.train_problems(
            task, args.seed, args.sft_steps + i, args.num_prompts)]
        plen_B = np.repeat(batch[1], args.num_generations).astype(np.float64)
        real_t = plen_B + lengths
        e = args.num_epochs
        row = {"step": i + 1, "seconds": seconds, "compile_s": compiles.take(),
               **{f"{k}_s": float(m[f"time/{k}_s"]) for k in ("rollout", "reward", "update")},
               "generated_tokens": int(m["generated_tokens"]),
               "decode_steps": int(lengths.max()),
               "reward": float(m["reward"]), "accuracy": float(m["accuracy"]),
               "truncated_frac": float(m["truncated_frac"]),
               "groups_with_signal": float(m["groups_with_signal"]),
               "loss": float(m["loss"]), "entropy": float(m["entropy"]),
               "grad_norm": float(m["grad_norm"]),
               **{k: float(v) for k, v in m.items() if k.startswith("response_length/")},
               "update_flops_padded": e * train_flops(cfg, n_rows, n_rows * (prompt_len + n_new),
                                                      n_rows * n_new,
                                                      n_rows * (prompt_len + n_new) ** 2),
               "update_flops_real": e * train_flops(cfg, n_rows, real_t.sum(), float(lengths.sum()),
                                                    float((real_t ** 2).sum())),
               "lengths": lengths.tolist()}
        row["packing"] = {args.packing[0]: packing_row(m, row["compile_s"]), **others}
        rl_rows.append(row)
        log(f"GRPO step {i + 1}/{args.rl_steps}: {seconds:.2f}s = rollout {row['rollout_s']:.2f} "
            f"+ reward {row['reward_s']:.3f} + update {row['update_s']:.2f}"
            f"{' (compiles)' if row['compile_s'] else ''}; {row['generated_tokens']} tokens, "
            f"mean length {lengths.mean():.1f}, max {lengths.max()}; reward {row['reward']:.3f}")
    timed = [r for r in rl_rows if not r["compile_s"]]
    if timed:
        upd = sum(r["update_s"] for r in timed)
        roll = sum(r["rollout_s"] for r in timed)
        every = np.concatenate(lengths_per_step)
        report["rl"]["summary"] = {
            "timed_steps": len(timed),
            "compile_steps_s": [r["seconds"] for r in rl_rows if r["compile_s"]],
            **{f"mean_{k}": _mean([r[k] for r in timed])
               for k in ("seconds", "rollout_s", "reward_s", "update_s")},
            "rollout_tokens_per_s": sum(r["generated_tokens"] for r in timed) / roll,
            "rollout_ms_per_decode_step": 1e3 * roll / sum(r["decode_steps"] for r in timed),
            "update_tokens_per_s_padded": len(timed) * args.num_epochs * n_rows
                                          * (prompt_len + n_new) / upd,
            "update_mfu_padded": (sum(r["update_flops_padded"] for r in timed) / upd / peak
                                  if peak else None),
            "update_mfu_real": (sum(r["update_flops_real"] for r in timed) / upd / peak
                                if peak else None),
            "lengths_all_steps": {"count": int(every.size), "mean": float(every.mean()),
                                  "p50": float(np.percentile(every, 50)),
                                  "p90": float(np.percentile(every, 90)),
                                  "max": int(every.max()),
                                  "at_budget_frac": float(np.mean(every >= n_new)),
                                  "truncated_frac": _mean([r["truncated_frac"] for r in rl_rows])},
            "packing": packing_summary(rl_rows, args.packing, peak),
        }
    if args.profile_dir:
        report["profile"] = profile_updates(args, config, built, state,
                                            source.rl_batch(args.sft_steps + args.rl_steps,
                                                            args.num_prompts))
        common.write_json(json_path, report)
    evaluate("after_rl")
    if common.peak_memory_gib() is not None:
        report["peak_memory_gib"] = common.peak_memory_gib()
    if lengths_per_step:
        plot_lengths(png_path, lengths_per_step, reference, n_new,
                     f"{args.preset} (vocab {cfg.vocab_size}) on {args.task} d{args.difficulty}: "
                     f"{args.num_prompts} prompts x {args.num_generations}, temperature 1, after "
                     f"{len(sft_rows)} SFT steps; {info['device']['kind']}, "
                     f"{report['date'][:10]}")
        report["histogram"] = os.path.basename(png_path)
        log(f"wrote {png_path}")
    report["total_s"] = elapsed()
    common.write_json(json_path, report)
    log(f"wrote {json_path}")
    print(tables(report), flush=True)


def profile_updates(args, config, built, state, batch) -> dict:
    """Per packing mode: the update phase (not donating, so each mode sees the same state) on
    one rollout of `state`, timed and profiled, with the compiled program's cost analysis."""
    import functools

    import jax

    from jaxrl.rl import grpo

    tok, n_new = built.source.tokenizer, built.source.max_new_tokens
    prompts_PL, plen_P, _, ids_P = batch
    out, _ = jax.jit(functools.partial(
        grpo.rollout_phase, built.model, config.rl, config.rollout, max_new_tokens=n_new,
        stop_tokens=tuple(tok.eos_ids), pad_id=tok.pad_id))(state, prompts_PL, plen_P, ids_P)
    # The update computes the same whatever the rewards are; random ones give every group
    # an advantage, as a learning policy's would.
    rewards_B = jax.random.normal(jax.random.key(0), out.lengths_B.shape)
    inputs = (state, prompts_PL, plen_P, ids_P, out, rewards_B)
    result = {}
    for mode in args.packing:
        update = jax.jit(functools.partial(grpo.update_phase, built.model,
                                           config.rl.replace(packing=mode)))
        compiled = update.lower(*inputs).compile()  # the jit's call would compile it again
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        prof = common.profile(lambda: compiled(*inputs)[1],
                              os.path.join(args.profile_dir, mode))
        top = sorted(prof["groups"].items(), key=lambda kv: -kv[1][0])[:20]
        result[mode] = {"wall_ms": prof["wall_ms"], "busy_ms": prof["busy_ms"],
                        "kernels": prof["kernels"], "top": top,
                        "xla_flops": cost.get("flops"),
                        "xla_bytes_accessed": cost.get("bytes accessed")}
        log(f"update profile, packing={mode}: {prof['wall_ms']:.1f} ms wall, "
            f"{prof['busy_ms']:.1f} ms busy in {prof['kernels']} kernels; XLA counts "
            f"{(cost.get('flops') or 0) / 1e12:.2f} TFLOP, "
            f"{(cost.get('bytes accessed') or 0) / 1e9:.1f} GB")
        for name, (ms, calls) in top[:12]:
            log(f"  {ms:8.2f} ms {calls:6d}  {name}")
    return result


def _f(x, spec):
    return "n/a" if x is None else format(x, spec)


def tables(report: dict) -> str:
    sft, rl = report["sft"].get("summary"), report["rl"].get("summary")
    rows = [("device", f"{report['device']['kind']} ({report['peak_note']})"),
            ("model", f"{report['model']['preset']}, {report['model']['num_params'] / 1e6:.1f}M "
                      f"params, vocab {report['model']['vocab_size']}, params "
                      f"{report['model']['param_dtype']}, activations {report['model']['dtype']}"),
            ("task", f"{report['task']['name']} d{report['task']['difficulty']}, prompt_len "
                     f"{report['task']['prompt_len']}, max_new_tokens "
                     f"{report['task']['max_new_tokens']}")]
    if sft:
        rows += [("SFT step (timed steps)",
                  f"{1e3 * sft['mean_step_s']:.1f} ms ({sft['timed_steps']})"),
                 ("SFT tokens/s padded / real", f"{sft['tokens_per_s_padded']:,.0f} / "
                                                f"{sft['tokens_per_s_real']:,.0f}"),
                 ("SFT MFU padded / real", f"{_f(sft['mfu_padded'], '.1%')} / "
                                           f"{_f(sft['mfu_real'], '.1%')}"),
                 ("SFT final loss", f"{sft['final_loss']:.4f}")]
    for phase in ("sft", "rl"):
        if report[phase].get("cut_short"):
            rows.append((f"{phase.upper()} cut short by --time-budget-s",
                         f"after {len(report[phase]['steps'])} steps"))
    for name, acc in report["eval_accuracy"].items():
        rows.append((f"held-out accuracy {name.replace('_', ' ')}", f"{acc:.3f}"))
    if rl:
        total = rl["mean_rollout_s"] + rl["mean_reward_s"] + rl["mean_update_s"]
        rows += [("GRPO step (timed steps)", f"{rl['mean_seconds']:.3f} s ({rl['timed_steps']})")]
        rows += [(f"  {k}", f"{rl[f'mean_{k}_s']:.3f} s ({100 * rl[f'mean_{k}_s'] / total:.0f}%)")
                 for k in ("rollout", "reward", "update")]
        rows += [("  steps that compiled", ", ".join(f"{x:.1f} s" for x in rl["compile_steps_s"])),
                 ("rollout tokens/s", f"{rl['rollout_tokens_per_s']:,.0f}"),
                 ("rollout ms per decode step", f"{rl['rollout_ms_per_decode_step']:.2f}"),
                 ("update tokens/s (padded)", f"{rl['update_tokens_per_s_padded']:,.0f}"),
                 ("update MFU padded / real", f"{_f(rl['update_mfu_padded'], '.1%')} / "
                                              f"{_f(rl['update_mfu_real'], '.1%')}")]
        for mode, p in rl["packing"].items():
            if p:
                rows.append((f"  update with packing={mode} ({p['timed_steps']} timed)",
                             f"{p['mean_update_s']:.3f} s, MFU padded / real "
                             f"{_f(p['update_mfu_padded'], '.1%')} / "
                             f"{_f(p['update_mfu_real'], '.1%')}, packed "
                             f"{_f(p['packed_frac'], '.0%')} of minibatches"))
        ln = rl["lengths_all_steps"]
        rows.append(("rollout length mean / p50 / p90 / max",
                     f"{ln['mean']:.1f} / {ln['p50']:.0f} / {ln['p90']:.0f} / {ln['max']}"
                     f" ({100 * ln['truncated_frac']:.1f}% cut at max_new_tokens, {ln['count']} "
                     "rollouts)"))
    if "peak_memory_gib" in report:
        rows.append(("peak device memory", f"{report['peak_memory_gib']:.1f} GiB"))
    out = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    steps = report["rl"]["steps"]
    if steps:
        out += ["", "| GRPO step | total s | rollout s | reward s | update s | generated tokens "
                    "| mean length | max length | reward |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['step']}{' (compiles)' if r['compile_s'] else ''} | {r['seconds']:.3f} | "
                f"{r['rollout_s']:.3f} | {r['reward_s']:.4f} | {r['update_s']:.3f} | "
                f"{r['generated_tokens']} | {r['response_length/mean']:.1f} | "
                f"{r['response_length/max']:.0f} | {r['reward']:.3f} |" for r in steps]
    return "\n".join(out)


if __name__ == "__main__":
    main(parse_args())
