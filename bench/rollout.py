r"""DAS rollout benchmark: plain vs speculative GRPO rollouts at equal outputs.

    python -m bench.rollout --out-dir rollout_bench            # on a GPU
    python -m bench.rollout --preset tiny --sft-steps 5 ...    # a CPU smoke run

The training job's recipe: `configs/grpo.py` with this script's settings as overrides,
built by `jaxrl.jobs.train.build` (model, prompt pool, reward, state with the DAS history)
and SFT-trained by the job's SFT step on an embedded task with long-tailed solution
lengths (sort traces by default); then GRPO steps of `jaxrl.rl.grpo.make_step` on a fixed
pool of prompts, all of them every step. The first `--warm-steps` steps fill the rollout
history; each measured step then rolls out the same state with plain decoding, with
compacted plain decoding (no drafts, finished rows compacted as DAS compacts them: what
DAS gains over it is speculation's share) and with DAS (and its ablations), checks that
the tokens are equal, and times each; the GRPO step then rolls out with plain decoding
(the same tokens again) and updates, so the policy drifts as in training. Old log-probs
come from the sampler, as when BENCHMARKS.md's figures were measured. `--layers` deepens
the preset, for a policy whose decode step costs more than the drafting does.

Writes `rollout.json` (per step and summary), `rollout.md` (the table for BENCHMARKS.md)
and `active_rows.png` (live rows per decode pass, plain vs DAS) to `--out-dir`.

Needs ml-collections (the configs are ml-collections files), which the GPU image lacks:
bench/__init__.py says how to carry it there.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import numpy as np

from bench import common
from jaxrl import compilation, sharding
from jaxrl.jobs import train
from jaxrl.models.config import PRESETS
from jaxrl.rl import grpo, logprobs, losses
from jaxrl.rollout import das, drafter, policy, speculative


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sort")
    p.add_argument("--difficulty", type=int, default=1)
    p.add_argument("--preset", default="small")
    p.add_argument("--layers", type=int, default=0, help="override the preset's layer count")
    p.add_argument("--dtype", default="bfloat16", help="activations; params stay float32")
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--sft-batch", type=int, default=64)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--rl-lr", type=float, default=1e-5)
    p.add_argument("--pool", type=int, default=64, help="distinct prompts; one step draws all")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--num-minibatches", type=int, default=0,
                   help="config.rl.num_minibatches (0: the config's); a deep policy's update "
                        "needs more to fit in memory")
    p.add_argument("--warm-steps", type=int, default=4, help="steps that fill the history")
    p.add_argument("--steps", type=int, default=3, help="measured steps")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each rollout per step")
    p.add_argument("--ablations", type=common.csv(str, allow_empty=True),
                   default=["no_length_aware", "no_compaction", "window_1", "window_16"],
                   help=f"comma list of {sorted(ABLATIONS)}; '' for none")
    p.add_argument("--widths", type=common.csv(int), default=[0, 4, 8, 16],
                   help="verification widths (one compile each)")
    p.add_argument("--min-bucket", type=int, default=8)
    p.add_argument("--fit-cost-model", type=int, default=1)
    p.add_argument("--temperatures", type=common.csv(float), default=[1.0],
                   help="sampling temperatures of the measured rollouts (each variant at "
                        "each); training and the history's warm-up sample at rl.temperature")
    p.add_argument("--scan-layers", type=int, default=0,
                   help="1: the Decoder scans its layers (config.model.scan_layers)")
    p.add_argument("--remat", type=int, default=0,
                   help="1: SFT and the update recompute each layer (config.model.remat)")
    p.add_argument("--compile-ahead-at", type=int, default=1,
                   help="SFT step after which the RL programs start compiling on background "
                        "threads (1: beside SFT, as the job does; 0: after SFT, so that a large "
                        "policy's SFT and the compiles' autotuning do not share the GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-dir", default="",
                   help="profile DAS and compacted plain at the last step (Perfetto) here")
    p.add_argument("--out-dir", default="rollout_bench")
    args = p.parse_args(argv)
    if not 0 <= args.compile_ahead_at <= max(args.sft_steps, 1):
        p.error(f"--compile-ahead-at={args.compile_ahead_at}: must be in "
                f"[0, {max(args.sft_steps, 1)}] (--sft-steps={args.sft_steps})")
    unknown = [name for name in args.ablations if name not in ABLATIONS]
    if unknown:
        p.error(f"--ablations: unknown {unknown}; valid: {sorted(ABLATIONS)}")
    return args


def make_config(args) -> train.TrainConfig:
    """configs/grpo.py with DAS on, this benchmark's pool, sizes and rates, and old
    log-probs from the sampler; the cost model is fitted here, over every variant's widths."""
    model = args.preset
    if args.layers:  # the loader builds presets by name: register the deeper one
        model = f"{args.preset}_{args.layers}_layers"
        PRESETS[model] = PRESETS[args.preset].replace(num_layers=args.layers)
    arg = (f"task={args.task},difficulty={args.difficulty},model={model},speculative=True,"
           f"sft_steps={args.sft_steps},rl_steps={args.warm_steps + args.steps}")
    return common.train_config(arg, {
        "seed": args.seed, "task.train_pool": args.pool, "model.dtype": args.dtype,
        "model.scan_layers": bool(args.scan_layers), "model.remat": bool(args.remat),
        "sft.batch_size": args.sft_batch, "sft.learning_rate": args.sft_lr,
        "rl.learning_rate": args.rl_lr, "rl.num_prompts": args.pool,
        "rl.num_generations": args.num_generations, "rl.old_logprobs": "sampler",
        "rollout.widths": tuple(args.widths),
        "rollout.min_bucket": args.min_bucket, "rollout.fit_cost_model": False,
        "eval.num_problems": 1,
        **({"rl.num_minibatches": args.num_minibatches} if args.num_minibatches else {})})


# name -> how an ablation changes DAS's rollout config.
ABLATIONS = {
    "min_prob_0": lambda base: base.replace(min_token_prob=0.0),
    # Drafts reach 32 tokens only if spec_factor * max_match allows it.
    "drafts_32": lambda base: base.replace(widths=base.widths + (32,), spec_factor=2.0),
    "no_length_aware": lambda base: base.replace(length_aware=False),
    "no_compaction": lambda base: base.replace(compaction=False),
    "window_1": lambda base: base.replace(window=1),
    "window_16": lambda base: base.replace(window=16),
    # The kernels (kernels/): DAS with the XLA verification instead of the Pallas one, and
    # with the Pallas ragged attention in the cached passes.
    "xla_verify": lambda base: base.replace(verify_impl="reference"),
    "pallas_attention": lambda base: base.replace(attention_impl="pallas")}


def variants(ablations: list[str], base: das.RolloutConfig) -> dict[str, das.RolloutConfig]:
    """name -> the rollout config of each variant; `base` (DAS as configured) is `das`."""
    # Compacted plain decoding: no drafts, finished rows compacted as DAS does, so that
    # DAS's gain over it is speculation's alone.
    return {"plain_compacted": base.replace(widths=(0,)), "das": base,
            **{name: ABLATIONS[name](base) for name in ablations}}


def window_view(history: drafter.History, window: int, group: int) -> drafter.History:
    """The newest `window` appearances of a history kept with a larger window."""
    return history.replace(tokens_SRN=history.tokens_SRN[:, :window * group],
                           lengths_SR=history.lengths_SR[:, :window * group], window=window)


def timed(fn, repeats):
    """`fn()`'s output and the best of `repeats` timed calls after it (nan for 0)."""
    out = jax.block_until_ready(fn())  # compiles (or warms) outside the timing
    return out, min(common.time_calls(fn, repeats, warmup=0)) if repeats else float("nan")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    config = make_config(args)
    vs = variants(args.ablations, config.rollout)
    # One history, kept with the largest window a variant views (`window_view`).
    config = dataclasses.replace(config, rollout=config.rollout.replace(
        window=max(v.window for v in vs.values())))
    mesh = sharding.make_mesh(config.mesh)
    built = train.build(config, mesh)
    model, source, state = built.model, built.source, built.state
    n, g = source.max_new_tokens, args.num_generations
    report = {**common.run_info("rollout", argv), "args": vars(args),
              "params": model.cfg.num_params(), "steps": []}

    kw = dict(max_new_tokens=n, stop_tokens=tuple(source.tokenizer.eos_ids),
              pad_id=source.tokenizer.pad_id)
    plain_cfg = config.rollout.replace(speculative=False)
    # The job's GRPO step, rolling out with plain decoding: the update the timed rollouts
    # share (the history it records feeds the DAS variants).
    train_step = grpo.make_step(model, config.rl, plain_cfg, built.reward, **kw)
    # The temperature is an argument of each program, so a sweep compiles each once.
    plain_jit = jax.jit(lambda st, p, l, i, t: grpo.rollout_phase(
        model, config.rl, plain_cfg, st, p, l, i, temperature=t, **kw)[0])
    if args.fit_cost_model:  # on random weights (speculative.timing_params): before SFT
        rows = args.pool * g
        c_base, c_tok, _ = policy.fitted_cost_model(
            model, built.layout, rows, tuple(sorted({w for v in vs.values() for w in v.widths})),
            config.rollout.verify_impl, None)
        # Each variant's own drafter settings set its drafting cost (none drafts nothing).
        draft_s = {k: speculative.drafting_cost_model(
            model.clone(attention_impl=v.attention_impl), built.layout, v, rows, g,
            source.prompt_len, n, c_tok) if v.max_draft else (0.0, 0.0) for k, v in vs.items()}
        report["cost_model"] = {"c_base_s": c_base, "c_tok_s": c_tok, "draft_s": draft_s}
        log(f"cost model: {1e3 * c_base:.3f} ms + {1e6 * c_tok:.3f} us/token; drafting "
            + ", ".join(f"{k} {1e3 * d:.3f} ms + {1e6 * r:.3f} us/row"
                        for k, (d, r) in draft_s.items()))
        vs = {k: v.replace(cost_base=c_base, cost_per_token=c_tok, draft_cost=draft_s[k][0],
                           draft_cost_per_row=draft_s[k][1]) for k, v in vs.items()}
    progs = Programs(
        plain=plain_jit, variants=vs, group=g,
        spec={name: jax.jit(lambda st, p, l, i, t, v=v, m=model.clone(
            attention_impl=v.attention_impl): grpo.rollout_phase(
                m, config.rl, v, st, p, l, i, temperature=t, **kw)) for name, v in vs.items()},
        entropy=jax.jit(lambda params, p, l, out, t: mean_entropy(model, params, p, l, out, t,
                                                                  g)))
    temps = [np.float32(t) for t in args.temperatures]
    # Every program compiles on a background thread, started after SFT step
    # --compile-ahead-at: by default the first, so beside SFT as the job compiles its first
    # RL step (the DAS programs are the largest: minutes on a GPU); 0 starts them after SFT.
    # They lower from the state after an SFT step, whose shardings every later state has
    # (these jits fix none of their own; the built state's differ).
    # Inputs stay host arrays, lowered and called alike (a device array made by
    # jnp.asarray is uncommitted when called, but lowers committed: another program).
    ahead, batch = compilation.Ahead(), source.rl_batch(0, args.pool)
    inputs = (batch[0], batch[1], batch[3])

    def compile_ahead(state):
        ahead.start("train", train_step.lower, state, *batch)
        ahead.start("plain", plain_jit.lower, state, *inputs, temps[0])
        for name, v in vs.items():
            ahead.start(name, progs.spec[name].lower,
                        state.replace(history=window_view(state.history, v.window, g)),
                        *inputs, temps[0])

    for step, _, state, m, seconds in common.sft_steps(built, args.sft_steps, args.sft_batch):
        if step == args.compile_ahead_at:
            compile_ahead(state)
        if step % 100 == 0 or step == args.sft_steps:
            log(f"sft {step}/{args.sft_steps}: loss {float(m['sft_loss']):.3f} "
                f"token acc {float(m['token_accuracy']):.3f}")
    if not (args.compile_ahead_at and args.sft_steps):
        compile_ahead(state)
    waited = ahead.wait("train")
    for name in ("plain", *vs):
        waited += ahead.wait(name)
    log(f"programs compiled ahead: {ahead.seconds:.1f} s of compile, {waited:.1f} s waited "
        "after SFT")
    report["compile_ahead"] = {"seconds": ahead.seconds, "waited_s": waited}

    profiles = {}
    for step in range(args.warm_steps + args.steps):
        batch = source.rl_batch(step, args.pool)
        inputs = (batch[0], batch[1], batch[3])
        row, c0 = {"step": step, "cells": {}}, compilation.seconds(this_thread=True)
        if step >= args.warm_steps:
            for t_name, temp in zip(args.temperatures, temps):
                row["cells"][str(t_name)] = measure_cell(
                    args, progs, state, inputs, temp,
                    profiles if t_name == args.temperatures[0] else None,
                    args.profile_dir if step == args.warm_steps + args.steps - 1 else "",
                    log=lambda msg, t_name=t_name: log(f"step {step} T={t_name} {msg}"))
        report["steps"].append(row)
        common.write_json(os.path.join(args.out_dir, "rollout.json"), report)
        state, m = train_step(state, *batch)
        row["compile_s"] = compilation.seconds(this_thread=True) - c0  # 0 unless a shape is new
        log(f"step {step}: reward {float(m['reward']):.3f}, mean length "
            f"{float(m['response_length/mean']):.1f}, max {int(m['response_length/max'])}, "
            f"compiled {row['compile_s']:.1f} s")

    measured = [r for r in report["steps"] if r["cells"]]
    report["summary"] = {str(t): summarize([r["cells"][str(t)] for r in measured], vs)
                         for t in args.temperatures}
    common.write_json(os.path.join(args.out_dir, "rollout.json"), report)
    lines = [common.heading(report), "",
             f"Policy: {report['params'] / 1e6:.1f}M params ({args.preset}"
             f"{f', {args.layers} layers' if args.layers else ''}), {args.task} "
             f"d{args.difficulty}; {len(measured)} measured steps; entropy = the sampling "
             "distribution's mean per-token entropy (nats) over plain decoding's tokens.", "",
             "| T | entropy | variant | rollout s (sum of steps) | speedup vs plain | "
             "vs compacted plain | passes / plain steps | acceptance (short / medium / long) | "
             "tokens per row-pass | rows identical |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in args.temperatures:
        summary = report["summary"][str(t)]
        lines.append(f"| {t} | {summary['entropy']:.3f} | plain | {summary['plain_s']:.3f} | "
                     "1.00x | | | | 1 | |")
        for name in vs:
            s = summary[name]
            lines.append(
                f"| {t} | | {name} | {s['s']:.3f} | {s['speedup']:.2f}x | "
                f"{s['speedup_vs_compacted']:.2f}x | {s['passes']:.0f} / "
                f"{s['plain_passes']:.0f} | {s['acceptance']:.2f} ({s['acceptance_short']:.2f} / "
                f"{s['acceptance_medium']:.2f} / {s['acceptance_long']:.2f}) | "
                f"{s['tokens_per_row_pass']:.2f} | {s['rows_identical']:.3f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out_dir, "rollout.md"), "w") as f:
        f.write(table + "\n")
    log(table)
    plot_profiles(profiles, os.path.join(args.out_dir, "active_rows.png"))


def mean_entropy(model, params, prompts_PL, prompt_lengths_P, out, temperature, group):
    """Mean per-token entropy (nats) of the distribution the tokens were sampled from (the
    logits over `temperature`), over the rollout's valid completion tokens."""
    logits_BNV = logprobs.completion_logits(
        model, params, grpo.repeat_groups(prompts_PL, group),
        grpo.repeat_groups(prompt_lengths_P, group), out.tokens_BN, out.lengths_B)
    mask_BN = logprobs.completion_mask(out.lengths_B, out.tokens_BN.shape[1])
    return losses.entropy_from_logits(logits_BNV / temperature, mask_BN)


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted rollouts a measured step times: `plain(state, prompts, lengths, ids,
    temperature)`, `spec[name]` the same for each variant (`variants[name]` its config;
    they return (rollout, stats)), and `entropy(params, prompts, lengths, rollout,
    temperature)`; `group` rollouts per prompt."""

    plain: object
    spec: dict
    variants: dict
    entropy: object
    group: int


def measure_cell(args, progs: Programs, state, inputs, temp, profiles, profile_dir, log):
    """One measured step at one temperature: plain decoding timed, then every variant,
    checked against plain's tokens; `profiles` (or None) gets the live rows per pass."""
    plain, plain_s = timed(lambda: progs.plain(state, *inputs, temp), args.repeats)
    cell = {"plain_s": plain_s, "tokens": int(plain.lengths_B.sum()),
            "max_len": int(plain.lengths_B.max()), "plain_passes": int(plain.lengths_B.max()) - 1,
            "entropy": float(progs.entropy(state.params, inputs[0], inputs[1], plain, temp))}
    if profiles is not None:
        lengths = np.asarray(plain.lengths_B)
        profiles["plain"] = [int((lengths > i + 1).sum()) for i in range(int(lengths.max()) - 1)]
    for name, v in progs.variants.items():
        st = state.replace(history=window_view(state.history, v.window, progs.group))
        (out, stats), secs = timed(lambda: progs.spec[name](st, *inputs, temp), args.repeats)
        same_rows = np.all(np.asarray(out.tokens_BN) == np.asarray(plain.tokens_BN), axis=1)
        m = jax.device_get(das.metrics(stats, out.lengths_B))
        cell[name] = {"s": secs, "speedup": plain_s / secs,
                      "rows_identical": float(same_rows.mean()),
                      "tokens_identical": float(np.mean(np.asarray(out.tokens_BN)
                                                        == np.asarray(plain.tokens_BN))),
                      # Accepted tokens per live row of a drafting pass: what the
                      # drafting rule predicts from (`policy.predicted_gain`).
                      "gain_per_drafting_row": float(stats.accepted)
                      / max(int(stats.drafting_row_passes), 1),
                      "drafting_passes": int(stats.passes - stats.skipped),
                      **{k.removeprefix("spec/"): float(x) for k, x in m.items()}}
        if profiles is not None and name in ("das", "plain_compacted"):
            profiles[name] = np.asarray(stats.active_N)[:int(stats.passes)].tolist()
            if profile_dir:
                cell[name]["profile"] = pass_profile(
                    lambda: progs.spec[name](st, *inputs, temp),
                    os.path.join(profile_dir, name), int(stats.passes))
                log(f"{name} profile: " + ", ".join(
                    f"{k} {x:.4g}" for k, x in cell[name]["profile"].items() if k != "top"))
        c = cell[name]
        log(f"{name}: {1e3 * secs:.1f} ms vs plain {1e3 * plain_s:.1f} ms = "
            f"{plain_s / secs:.2f}x, passes {int(stats.passes)} vs {cell['plain_passes']}, "
            f"drafting {c['drafting_passes']}, gain per drafting row "
            f"{c['gain_per_drafting_row']:.2f}, acceptance {c['acceptance']:.2f}, rows "
            f"identical {c['rows_identical']:.3f}, entropy {cell['entropy']:.3f}")
    return cell


def summarize(cells: list[dict], vs) -> dict:
    """Sums of seconds and means of the rest over the measured steps of one temperature."""
    out = {"plain_s": sum(c["plain_s"] for c in cells),
           "entropy": float(np.mean([c["entropy"] for c in cells]))}
    for name in vs:
        secs = sum(c[name]["s"] for c in cells)
        out[name] = {"s": secs, "speedup": out["plain_s"] / secs,
                     "speedup_vs_compacted": sum(c["plain_compacted"]["s"] for c in cells) / secs,
                     **{k: float(np.mean([c[name][k] for c in cells]))
                        for k in ("acceptance", "tokens_per_row_pass", "passes",
                                  "plain_passes", "rows_identical", "acceptance_short",
                                  "acceptance_medium", "acceptance_long")}}
    return out


def pass_profile(run, trace_dir: str, passes: int, top: int = 12) -> dict:
    """One rollout under the profiler (`common.profile`), per pass: wall and kernel-busy ms,
    kernels launched, and the kernel groups that took the most time (prefill included)."""
    prof = common.profile(run, trace_dir)
    groups = sorted(prof["groups"].items(), key=lambda kv: -kv[1][0])[:top]
    return {"wall_ms_per_pass": prof["wall_ms"] / passes,
            "busy_ms_per_pass": prof["busy_ms"] / passes,
            "kernels_per_pass": prof["kernels"] / passes,
            "top": [{"kernel": g, "ms_per_pass": ms / passes, "calls_per_pass": c / passes}
                    for g, (ms, c) in groups]}


def plot_profiles(profiles: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", flush=True)
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, active in profiles.items():
        ax.step(np.arange(len(active)), active, where="post", label=f"{name} ({len(active)} passes)")
    ax.set_xlabel("decode pass")
    ax.set_ylabel("live rows")
    ax.set_title("Live rows per decode pass, last measured step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
