"""What one DAS pass costs, piece by piece, against one plain decode step.

    python -m bench.das_pass --out-dir das_pass_bench        # on a GPU
    python -m bench.das_pass --rows 8 --iters 2               # a CPU smoke run

Each piece runs `--iters` times inside one jitted `fori_loop`, the way the rollout's
`while_loop` runs it, so launch and scheduling costs count as they do there; the figure is
the loop's wall time over `--iters`. Costs depend on shapes only (the drafter scans the
whole padded corpus), so the weights are random and the corpus is random tokens.

Pieces, at each bucket size (rows):
- `decode_step`: the plain rollout's step: one cached forward of 1 token per row + sample.
- `verify_k`: one cached forward of k + 1 tokens per row + `speculative_sample`.
- `corpus`: building the rows' contexts and the per-prompt corpus from history + live outputs.
- `draft`: one pass's whole drafting, `drafter.pass_drafts` (the corpus and contexts
  above, then match, candidates, walk).
- `match`: the match-length scan alone; `candidates`: the first-occurrence selection alone.
- `switch`: a `lax.switch` on device data (the width choice) around a trivial op, against
  `no_switch`, the op alone: what a data-dependent branch costs in a loop.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.kv_cache import init_cache
from jaxrl.rollout import drafter, policy
from jaxrl.rollout.sampling import SamplingParams, position_keys, sample
from kernels.speculative_sampling import speculative_sample


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--rows", type=common.csv(int), default=[512, 64, 8], help="bucket sizes")
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=433)
    p.add_argument("--prompt-len", type=int, default=48)
    p.add_argument("--context", type=int, default=200, help="filled cache slots per row")
    p.add_argument("--max-match", type=int, default=16)
    p.add_argument("--max-draft", type=int, default=16)
    p.add_argument("--max-candidates", type=int, default=64)
    p.add_argument("--widths", type=common.csv(int), default=[4, 16])
    p.add_argument("--iters", type=int, default=64)
    p.add_argument("--out-dir", default="das_pass_bench")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cfg = preset(args.preset, vocab_size=args.vocab, dtype="bfloat16", param_dtype="float32")
    model = Decoder(cfg)
    params = init_params(cfg, jax.random.key(0))
    apply = functools.partial(model.apply, {"params": params})
    m, d, g, n = args.max_match, args.max_draft, args.group, args.max_new_tokens
    rng = np.random.default_rng(0)
    spec = types.SimpleNamespace(max_match=m, max_draft=d, spec_factor=1.0, min_token_prob=0.1,
                                 max_candidates=args.max_candidates)  # the drafter's settings
    results = []
    for rows in args.rows:
        p = max(rows // g, 1)
        group_B = jnp.arange(rows, dtype=jnp.int32) // g % p
        prompts_PL = jnp.asarray(rng.integers(3, args.vocab, (p, args.prompt_len)), jnp.int32)
        plen_P = jnp.full((p,), args.prompt_len, jnp.int32)
        lengths_PR = rng.integers(20, n, (p, args.window * g))
        history_PRN = drafter.mask_outputs(
            jnp.asarray(rng.integers(3, 12, (p * args.window * g, n)), jnp.int32),
            jnp.asarray(lengths_PR.reshape(-1))).reshape(p, args.window * g, n)
        outputs_BN = jnp.asarray(rng.integers(3, 12, (rows, n)), jnp.int32)
        out_len_B = jnp.full((rows,), args.context - args.prompt_len, jnp.int32)
        budget_B = jnp.full((rows,), d, jnp.int32)
        sampling = SamplingParams.make(rows, temperature=1.0)
        key = jax.random.key(1)
        uids_B = jnp.arange(rows, dtype=jnp.int32)

        def corpus_and_contexts(i):
            t_B = out_len_B + i % 8  # vary the input so nothing is hoisted out of the loop
            ctx_BM = drafter.contexts(prompts_PL[group_B], plen_P[group_B], outputs_BN, t_B, m)
            live_PGN = drafter.mask_outputs(outputs_BN, t_B).reshape(-1, g, n)[:p]
            return ctx_BM, drafter.build_corpus(prompts_PL, plen_P, live_PGN, history_PRN, m)

        def draft_body(i, acc):  # the whole of one pass's drafting, as the rollout does it
            dr = drafter.pass_drafts(spec, prompts_PL, plen_P, outputs_BN, out_len_B + i % 8,
                                     history_PRN, jnp.arange(rows, dtype=jnp.int32), budget_B)
            return acc + dr.num_B.sum() + dr.tokens_BD.sum()

        def corpus_body(i, acc):
            ctx_BM, corpus_PX = corpus_and_contexts(i)
            return acc + ctx_BM.sum() + corpus_PX[:, ::97].sum()

        def match_body(i, acc):
            ctx_BM, corpus_PX = corpus_and_contexts(i)
            ml_BX = drafter.match_lengths(ctx_BM, corpus_PX[group_B])
            return acc + jnp.max(ml_BX, axis=1).sum()

        x = corpus_and_contexts(0)[1].shape[1]

        def candidates_body(i, acc):
            mask_BX = (jnp.arange(x) * (i + 7) + group_B[:, None]) % 131 == 0
            return acc + drafter.first_positions(mask_BX, args.max_candidates).sum()

        ctx_len = args.context + n + d + 1
        cache = init_cache(cfg, rows, ctx_len).replace(
            lengths_B=jnp.full((rows,), args.context, jnp.int32))

        def decode_body(i, carry):
            cache, last_B = carry
            logits_B1V, new = apply(last_B[:, None], cache=cache)
            s = sample(logits_B1V[:, 0], sampling, key, uids_B, jnp.full((rows,), i, jnp.int32))
            return new.replace(lengths_B=cache.lengths_B), s.tokens_B

        def verify_body(k, i, carry):
            cache, last_B = carry
            drafts_BK = (last_B[:, None] + jnp.arange(k)) % args.vocab
            logits_BTV, new = apply(jnp.concatenate([last_B[:, None], drafts_BK], 1), cache=cache)
            t_BT = i + jnp.arange(k + 1)[None, :] + jnp.zeros((rows, 1), jnp.int32)
            keys_BT2 = position_keys(key, jnp.repeat(uids_B, k + 1), t_BT.reshape(-1))
            tokens_BT, acc_B, _, _ = speculative_sample(
                logits_BTV, drafts_BK, jnp.full((rows,), k, jnp.int32), sampling.temperature_B,
                sampling.top_k_B, sampling.top_p_B, keys_BT2.reshape(rows, k + 1, 2))
            return new.replace(lengths_B=cache.lengths_B), tokens_BT[:, 0] + acc_B

        def switch_body(i, acc_B):  # a data-dependent branch, as the width choice is
            w = jnp.argmax(acc_B[:4]) % 4
            return jax.lax.switch(w, [lambda a, k=k: a * 3 + k for k in range(4)], acc_B)

        last_B = jnp.zeros((rows,), jnp.int32)
        row = {"rows": rows, "corpus_tokens": x, "ms": {}}
        pieces = {"decode_step": (decode_body, (cache, last_B)),
                  **{f"verify_{k}": (functools.partial(verify_body, k), (cache, last_B))
                     for k in args.widths},
                  "corpus": (corpus_body, jnp.int32(0)), "draft": (draft_body, jnp.int32(0)),
                  "match": (match_body, jnp.int32(0)), "candidates": (candidates_body, jnp.int32(0)),
                  "switch": (switch_body, jnp.arange(rows, dtype=jnp.int32)),
                  "no_switch": (lambda i, a: a * 3 + i, jnp.arange(rows, dtype=jnp.int32))}
        loops = [policy.timed_loop(body, init, iters=args.iters) for body, init in pieces.values()]
        for name, seconds in zip(pieces, policy.loops_seconds(loops)):
            row["ms"][name] = 1e3 * seconds
            print(f"rows {rows}: {name} {row['ms'][name]:.3f} ms", flush=True)
        results.append(row)
    report = {**common.run_info("das_pass", argv), "args": vars(args), "results": results}
    common.write_json(os.path.join(args.out_dir, "das_pass.json"), report)
    names = list(results[0]["ms"])
    lines = [common.heading(report), "",
             "| rows | corpus tokens/row | " + " | ".join(f"{k} (ms)" for k in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for r in results:
        lines.append(f"| {r['rows']} | {r['corpus_tokens']} | "
                     + " | ".join(f"{r['ms'][k]:.3f}" for k in names) + " |")
    table = "\n".join(lines)
    with open(os.path.join(args.out_dir, "das_pass.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
