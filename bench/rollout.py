"""DAS rollout benchmark: plain vs speculative GRPO rollouts at equal outputs.

    python bench/rollout.py --out-dir rollout_bench            # on a GPU
    python bench/rollout.py --preset tiny --sft-steps 5 ...    # a CPU smoke run

A policy is SFT-trained on an embedded task with long-tailed solution lengths (sort
traces by default), then GRPO runs on a fixed pool of prompts. The first `--warm-steps`
steps fill the rollout history; each measured step then rolls out the same state with
plain decoding, with compacted plain decoding (no drafts, finished rows compacted as DAS
compacts them: what DAS gains over it is speculation's share) and with DAS (and its
ablations), checks that the tokens are equal, and times each; the plain rollout feeds the
GRPO update, so the policy drifts as in training. `--layers` deepens the preset, for a
policy whose decode step costs more than the drafting does.

Writes `rollout.json` (per step and summary), `rollout.md` (the table for BENCHMARKS.md)
and `active_rows.png` (live rows per decode pass, plain vs DAS) to `--out-dir`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxrl.models.config import preset  # noqa: E402
from jaxrl.models.decoder import Decoder, init_params  # noqa: E402
from jaxrl.rl import grpo, state as state_lib  # noqa: E402
from jaxrl.rl.rewards import TaskReward  # noqa: E402
from jaxrl.rl.sft import make_sft_step  # noqa: E402
from jaxrl.rollout import drafter, policy  # noqa: E402
from jaxrl.rollout.speculative import SpecConfig  # noqa: E402
from jaxrl.tasks import batches, get_task  # noqa: E402
from jaxrl.tasks.base import EOS_ID, TOKENIZER  # noqa: E402


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
    p.add_argument("--warm-steps", type=int, default=4, help="steps that fill the history")
    p.add_argument("--steps", type=int, default=3, help="measured steps")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each rollout per step")
    p.add_argument("--ablations", default="no_length_aware,no_compaction,window_1,window_16",
                   help="comma list; '' for none")
    p.add_argument("--widths", default="0,4,8,16", help="verification widths (one compile each)")
    p.add_argument("--min-bucket", type=int, default=8)
    p.add_argument("--fit-cost-model", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="rollout_bench")
    return p.parse_args(argv)


def variants(args) -> dict[str, tuple[SpecConfig, int]]:
    """name -> (spec, window). The default DAS settings are configs/grpo.py's."""
    base = SpecConfig(widths=tuple(int(w) for w in args.widths.split(",")),
                      min_bucket=args.min_bucket)
    # Compacted plain decoding: no drafts, finished rows compacted as DAS does, so that
    # DAS's gain over it is speculation's alone.
    out = {"plain_compacted": (dataclasses.replace(base, widths=(0,)), 4), "das": (base, 4)}
    table = {"min_prob_0": (dataclasses.replace(base, min_token_prob=0.0), 4),
             # Drafts reach 32 tokens only if spec_factor * max_match allows it.
             "drafts_32": (dataclasses.replace(base, widths=base.widths + (32,),
                                               spec_factor=2.0), 4),
             "no_length_aware": (dataclasses.replace(base, length_aware=False), 4),
             "no_compaction": (dataclasses.replace(base, compaction=False), 4),
             "window_1": (base, 1), "window_16": (base, 16),
             # The kernels (kernels/): DAS with the XLA verification instead of the Pallas
             # one, and with the Pallas ragged attention in the cached passes.
             "xla_verify": (dataclasses.replace(base, verify_impl="reference"), 4),
             "pallas_attention": (base, 4)}
    for name in filter(None, args.ablations.split(",")):
        if name not in table:
            raise SystemExit(f"--ablations: unknown {name!r}; valid: {sorted(table)}")
        out[name] = table[name]
    return out


def window_view(history: drafter.History, window: int, group: int) -> drafter.History:
    """The newest `window` appearances of a history kept with a larger window."""
    return history.replace(tokens_SRN=history.tokens_SRN[:, :window * group],
                           lengths_SR=history.lengths_SR[:, :window * group], window=window)


def timed(fn, repeats):
    out = jax.block_until_ready(fn())  # compile (or warm) outside the timing
    times = [float("nan")]
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, float(np.nanmin(times)) if repeats else float("nan")


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    task = get_task(args.task, args.difficulty, None)
    prompt_len, solution_len = batches.budgets(task)
    n, g = solution_len, args.num_generations
    cfg = preset(args.preset, vocab_size=TOKENIZER.vocab_size, dtype=args.dtype,
                 param_dtype="float32")
    if args.layers:
        cfg = cfg.replace(num_layers=args.layers)
    model = Decoder(cfg)
    opt = SimpleNamespace(weight_decay=0.0, b1=0.9, b2=0.99, grad_clip=1.0)
    schedule = optax.join_schedules([optax.linear_schedule(0.0, args.sft_lr, 20),
                                     optax.constant_schedule(args.sft_lr),
                                     optax.constant_schedule(args.rl_lr)],
                                    [20, max(args.sft_steps, 21)])
    history = drafter.init_history(args.pool, 16, g, n)
    state = state_lib.create(init_params(cfg, jax.random.key(args.seed)),
                             state_lib.make_optimizer(opt, schedule), args.seed, False, history)
    report = {"device": jax.devices()[0].device_kind, "date": datetime.date.today().isoformat(),
              "command": "python bench/rollout.py " + " ".join(argv or sys.argv[1:]),
              "args": vars(args), "params": cfg.num_params(), "steps": []}

    t0 = time.perf_counter()
    sft = make_sft_step(model)
    for s in range(args.sft_steps):
        problems = batches.train_problems(task, args.seed, s, args.sft_batch)
        b = batches.encode(problems, prompt_len, batches.bucket_len(problems, solution_len, 128))
        state, m = sft(state, b.prompts_PL, b.prompt_lengths_P, b.solutions_PN, b.solution_lengths_P)
        if (s + 1) % 100 == 0 or s + 1 == args.sft_steps:
            log(f"sft {s + 1}/{args.sft_steps}: loss {float(m['sft_loss']):.3f} "
                f"token acc {float(m['token_accuracy']):.3f} ({time.perf_counter() - t0:.0f}s)")

    rl = SimpleNamespace(num_generations=g, temperature=1.0, top_k=0, top_p=1.0, advantage="grpo",
                         clip_low=0.2, clip_high=0.28, dual_clip=0.0, loss_agg="token-mean",
                         kl_coef=0.0, kl_estimator="k3", num_minibatches=2, num_epochs=1,
                         old_logprobs="sampler", dynamic_sampling=True, overlong_filter=False)
    kw = dict(max_new_tokens=n, stop_tokens=(EOS_ID,), pad_id=TOKENIZER.pad_id)
    reward = TaskReward(task, 0.0)
    plain_jit = jax.jit(lambda st, p, l, i: grpo.rollout_phase(model, rl, st, p, l, i, **kw)[0])
    vs = variants(args)
    if args.fit_cost_model:
        from jaxrl.rl.train import verification_timer
        from jaxrl import sharding
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        rows = args.pool * g
        c_base, c_tok = policy.measure_cost_model(
            verification_timer(model, rows, mesh), (rows, max(rows // 8, 1)),
            tuple(sorted({w for spec, _ in vs.values() for w in spec.widths})))
        report["cost_model"] = {"c_base_s": c_base, "c_tok_s": c_tok}
        log(f"cost model: {1e3 * c_base:.3f} ms + {1e6 * c_tok:.3f} us/token")
        vs = {k: (dataclasses.replace(s, cost_base=c_base, cost_per_token=c_tok), w)
              for k, (s, w) in vs.items()}
    models = {name: Decoder(cfg, attention_impl="pallas" if name == "pallas_attention"
                            else "reference") for name in vs}
    spec_jits = {name: jax.jit(lambda st, p, l, i, spec=spec, m=models[name]: grpo.rollout_phase(
        m, rl, st, p, l, i, spec=spec, **kw)) for name, (spec, _) in vs.items()}
    update_jit = jax.jit(lambda st, p, l, i, out, r: grpo.update_phase(model, rl, st, p, l, i, out, r))
    reward_jit = jax.jit(lambda out, t: reward(out.tokens_BN, out.lengths_B, out.finished_B,
                                               grpo.repeat_groups(t, g)))
    pool = batches.train_pool(task, args.seed, args.pool)
    profiles = {}
    for step in range(args.warm_steps + args.steps):
        ids_P = batches.epoch_indices(args.seed, step, args.pool, args.pool).astype(np.int32)
        b = batches.encode([pool[i] for i in ids_P], prompt_len, solution_len)
        inputs = (jnp.asarray(b.prompts_PL), jnp.asarray(b.prompt_lengths_P), jnp.asarray(ids_P))
        measured = step >= args.warm_steps
        plain, plain_s = timed(lambda: plain_jit(state, *inputs), args.repeats if measured else 0)
        row = {"step": step, "plain_s": plain_s,
               "tokens": int(plain.lengths_B.sum()), "max_len": int(plain.lengths_B.max()),
               "plain_passes": int(plain.lengths_B.max()) - 1}
        if measured:
            lengths = np.asarray(plain.lengths_B)
            profiles["plain"] = [int((lengths > i + 1).sum()) for i in range(int(lengths.max()) - 1)]
            for name, (spec, window) in vs.items():
                st = state.replace(history=window_view(state.history, window, g))
                (out, stats), secs = timed(lambda: spec_jits[name](st, *inputs), args.repeats)
                same_rows = np.all(np.asarray(out.tokens_BN) == np.asarray(plain.tokens_BN), axis=1)
                m = jax.device_get(grpo.spec_metrics(stats, out.lengths_B))
                row[name] = {"s": secs, "speedup": plain_s / secs,
                             "rows_identical": float(same_rows.mean()),
                             "tokens_identical": float(np.mean(np.asarray(out.tokens_BN)
                                                               == np.asarray(plain.tokens_BN))),
                             **{k.removeprefix("spec/"): float(v) for k, v in m.items()}}
                if name in ("das", "plain_compacted"):
                    profiles[name] = np.asarray(stats.active_N)[:int(stats.passes)].tolist()
                log(f"step {step} {name}: {1e3 * secs:.1f} ms vs plain {1e3 * plain_s:.1f} ms "
                    f"= {plain_s / secs:.2f}x, passes {int(stats.passes)} vs {row['plain_passes']}, "
                    f"acceptance {row[name]['acceptance']:.2f}, rows identical "
                    f"{row[name]['rows_identical']:.3f}")
        report["steps"].append(row)
        rewards, _ = reward_jit(plain, jnp.asarray(b.targets_PT))
        state, m = update_jit(state, *inputs, plain, rewards)
        log(f"step {step}: reward {float(m['reward']):.3f}, mean length "
            f"{float(m['response_length/mean']):.1f}, max {row['max_len']}")

    measured = [r for r in report["steps"] if "das" in r]
    summary = {"plain_s": sum(r["plain_s"] for r in measured)}
    for name in vs:
        secs = sum(r[name]["s"] for r in measured)
        summary[name] = {"s": secs, "speedup": summary["plain_s"] / secs,
                         "speedup_vs_compacted": sum(r["plain_compacted"]["s"] for r in measured) / secs,
                         **{k: float(np.mean([r[name][k] for r in measured]))
                            for k in ("acceptance", "tokens_per_row_pass", "passes",
                                      "plain_passes", "rows_identical", "acceptance_short",
                                      "acceptance_medium", "acceptance_long")}}
    report["summary"] = summary
    with open(os.path.join(args.out_dir, "rollout.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"{report['device']}, {report['date']}, `{report['command']}`", "",
             f"Policy: {report['params'] / 1e6:.1f}M params ({args.preset}"
             f"{f', {args.layers} layers' if args.layers else ''}).", "",
             "| variant | rollout s (sum of steps) | speedup vs plain | vs compacted plain | "
             "passes / plain steps | acceptance (short / medium / long) | tokens per row-pass | "
             "rows identical |",
             "|---|---|---|---|---|---|---|---|",
             f"| plain | {summary['plain_s']:.3f} | 1.00x | | | | 1 | |"]
    for name in vs:
        s = summary[name]
        lines.append(f"| {name} | {s['s']:.3f} | {s['speedup']:.2f}x | "
                     f"{s['speedup_vs_compacted']:.2f}x | {s['passes']:.0f} / "
                     f"{s['plain_passes']:.0f} | {s['acceptance']:.2f} ({s['acceptance_short']:.2f} / "
                     f"{s['acceptance_medium']:.2f} / {s['acceptance_long']:.2f}) | "
                     f"{s['tokens_per_row_pass']:.2f} | {s['rows_identical']:.3f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out_dir, "rollout.md"), "w") as f:
        f.write(table + "\n")
    log(table)
    plot_profiles(profiles, os.path.join(args.out_dir, "active_rows.png"))


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
