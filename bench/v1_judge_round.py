"""The cost of one V1-Infer judging round: calls/s and judge tokens/s of `ModelJudge`.

    python -m bench.v1_judge_round --out v1_round                 # a 0.5B shape on a GPU
    python -m bench.v1_judge_round --preset tiny --problems 2 ... # a CPU smoke run

A random-init decoder of `--preset`'s shape judges one Swiss round: P problems x N / 2
pairs, all in one batch (generate mode with `--max-new-tokens` and logits mode). Random
weights cannot judge, so only the cost is meaningful; in generate mode a random model
rarely stops early, so each call writes all `--max-new-tokens` tokens (an upper bound
for a judge that reasons before rating). Problems and solutions are random words of the
given lengths, tokenized one id per word or space, so prompt lengths are set directly.
Each mode runs once to compile, then `--repeats` timed rounds. Writes
`v1_judge_round.{md,json}` to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import time

import jax
import numpy as np

from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.verify import judge, tournament


class WordTokenizer:
    """One id per run of non-space characters or per space character, by a fixed table
    built as text arrives (deterministic for a given sequence of texts)."""

    pad_id, eos_ids = 0, (1,)

    def __init__(self, vocab_size: int):
        self.vocab_size, self.ids, self.words = vocab_size, {}, {}

    def encode(self, text):
        out = []
        for w in re.findall(r"\S+|\s", text):
            if w not in self.ids:
                self.ids[w] = 2 + len(self.ids) % (self.vocab_size - 2)
                self.words[self.ids[w]] = w
            out.append(self.ids[w])
        return out

    def decode(self, ids):
        return "".join(self.words.get(i, "") for i in ids)


def words(rng, n):
    return " ".join(f"w{i}" for i in rng.integers(0, 5000, n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="qwen2_0p5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--problem-words", type=int, default=100)
    ap.add_argument("--solution-words", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, nargs="+", default=[16, 256])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cfg = preset(args.preset, dtype=args.dtype, param_dtype=args.dtype)
    model, params = Decoder(cfg), init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    problems = [words(rng, args.problem_words) for _ in range(args.problems)]
    cands = [[words(rng, args.solution_words) for _ in range(args.n)] for _ in problems]
    tok = WordTokenizer(cfg.vocab_size)
    pairs_PR2 = tournament.random_pairs(args.n, np.full(args.problems, args.n // 2), rng)
    rows = []
    for mode, new in [("logits", 0)] + [("generate", m) for m in args.max_new_tokens]:
        j = judge.ModelJudge(model, params, tok, problems, cands, mode=mode, seed=0,
                             max_new_tokens=max(new, 1), len_multiple=128)
        j(pairs_PR2)  # compile
        j.stats = judge.JudgeStats()
        start = time.perf_counter()
        for _ in range(args.repeats):
            j(pairs_PR2)
        secs = (time.perf_counter() - start) / args.repeats
        s = j.stats
        calls, prompt, gen = s.calls / args.repeats, s.prompt_tokens / args.repeats, (
            s.generated_tokens / args.repeats)
        rows.append(dict(mode=mode, max_new_tokens=new, calls=calls, round_s=secs,
                         calls_per_s=calls / secs, prompt_tokens=prompt,
                         generated_tokens=gen, judge_tokens_per_s=(prompt + gen) / secs))
        print(rows[-1], flush=True)
    md = [f"One judging round: {args.problems} problems x {args.n // 2} pairs, "
          f"{args.preset} ({args.dtype}, random init), {jax.devices()[0].device_kind}, "
          f"problem {args.problem_words} + 2 x {args.solution_words} solution words.", "",
          "| mode | new tokens | calls | round s | calls/s | prompt tokens | generated | "
          "judge tokens/s |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['max_new_tokens']} | {r['calls']:.0f} | {r['round_s']:.3f} | "
           f"{r['calls_per_s']:.0f} | {r['prompt_tokens']:.0f} | {r['generated_tokens']:.0f} | "
           f"{r['judge_tokens_per_s']:.0f} |" for r in rows]
    out = pathlib.Path(args.out)
    (out / "v1_judge_round.json").write_text(json.dumps({"args": vars(args), "rows": rows}))
    (out / "v1_judge_round.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
