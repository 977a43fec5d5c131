"""Judge prompts, rating parsing, and a jaxrl model as a pairwise or pointwise judge.

A pairwise call shows the problem and two solutions and asks for a 1-10 rating of each; a
pointwise call shows one. The prompts use only characters of `CharTokenizer`'s alphabet
(ASCII letters, digits, punctuation, space, newline), so the embedded tasks' models can
read them; any HF tokenizer reads them too.

Two rating modes:

- `generate`: the prompt ends with "Rating A: "; the model writes "7" and then, in the
  format the prompt shows, "Rating B: 4". Ratings are parsed from the text; a reply
  without both ratings in [1, 10] is unparseable and counted: a tie in pairwise, the
  lowest rating in pointwise. With `reason`, the prompt instead asks the judge to think
  first and end with the rating lines, and the last ratings in the reply count.
- `logits`: each rating slot is the position right after a prompt ending in "Rating A: "
  (or "Rating B: ", a second prompt for the same call, so neither slot is read after a
  rating the model chose itself). The rating is the expectation over r = 1..10 of
  P(r | prompt), read from the next-token distribution. Tokenization-robust: each rating's
  tokens are found by encoding prefix + str(r) and checking that the prefix's tokens come
  first. One-token ratings read one distribution. Where "10" is two tokens ("1", "0", as in
  CharTokenizer and digit-splitting BPEs such as Qwen's), one more cached step after the
  "1" token gives P("0" | "1"): rating 10 gets P("1") P("0" | "1") and rating 1 gets
  P("1") (1 - P("0" | "1")). Masses are renormalized over the ten ratings, so probability
  on other tokens does not bias the mean. Cost: two prompts (one per slot) per call, each
  a prefill and one cached step; no sampling, no parsing.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl import sharding
from jaxrl.models.decoder import Decoder, for_forwards
from jaxrl.models.kv_cache import init_cache
from jaxrl.models.tokenizer import Tokenizer
from jaxrl.rollout.decode import generate
from jaxrl.rollout.sampling import SamplingParams

RATINGS = tuple(range(1, 11))
PAIR_INSTRUCTION = ("Rate each solution from 1 (wrong) to 10 (correct), on two lines:\n"
                    "Rating A: <1-10>\nRating B: <1-10>\n")
POINT_INSTRUCTION = "Rate the solution from 1 (wrong) to 10 (correct):\nRating: <1-10>\n"
UNPARSED_PAIR = (5.5, 5.5)  # a tie: equal ratings give v = 0.5 and the floor weight tau
UNPARSED_POINT = 1.0


REASON_FIRST = "Think it through first; end with the rating lines.\n"


def pair_prompt_parts(problem: str, first: str, second: str,
                      slot: str | None = "A") -> tuple[str, ...]:
    """`pair_prompt`'s text in parts: the template's constant text at even indices, the
    problem and solutions A and B at odd ones (`encode_prompt` tokenizes it part by part)."""
    if slot not in ("A", "B", None):
        raise ValueError(f"slot={slot!r}; valid: 'A', 'B', None")
    tail = REASON_FIRST if slot is None else f"Rating {slot}: "
    return ("Problem:\n", problem, "\n\nSolution A:\n", first, "\n\nSolution B:\n", second,
            f"\n\n{PAIR_INSTRUCTION}{tail}")


def pair_prompt(problem: str, first: str, second: str, slot: str | None = "A") -> str:
    """The pairwise judge prompt, `first` shown as solution A; it ends where the rating of
    `slot` ("A" or "B") is to be written, or (slot None) asks for reasoning first."""
    return "".join(pair_prompt_parts(problem, first, second, slot))


def point_prompt_parts(problem: str, solution: str, reason: bool = False) -> tuple[str, ...]:
    """`point_prompt`'s text in parts, as `pair_prompt_parts` (the problem and the solution
    at odd indices)."""
    return ("Problem:\n", problem, "\n\nSolution:\n", solution,
            f"\n\n{POINT_INSTRUCTION}" + (REASON_FIRST if reason else "Rating: "))


def point_prompt(problem: str, solution: str, reason: bool = False) -> str:
    """The pointwise judge prompt; it ends where the rating is to be written, or (`reason`)
    asks for reasoning first."""
    return "".join(point_prompt_parts(problem, solution, reason))


def encode_prompt(tokenizer: Tokenizer, parts: tuple[str, ...]) -> list[int]:
    """A judge prompt's tokens, each part tokenized on its own: the tokens PairRL trains on
    (rl/pairrl.py joins the template's tokens with the problem's and the solutions' own), so
    V1-Infer judges with them too. A BPE tokenizer can merge across a join (a problem that
    ends in a newline, then the template's two), so the text tokenized whole can differ."""
    return [i for part in parts for i in tokenizer.encode(part)]


_NUMBER = r"(\d+(?:\.\d+)?)(?:\s*/\s*10\b)?"
_LABEL = r"\b(?:rating\s*(?:of\s*|for\s*)?)?(?:solution\s*)?{}\s*[:=]\s*"
_SLOT_RE = {s: re.compile(_LABEL.format(s) + _NUMBER, re.IGNORECASE) for s in "AB"}
_OUT_OF_TEN_RE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b")
_POINT_RE = re.compile(r"\brating\s*[:=]\s*" + _NUMBER, re.IGNORECASE)


def _in_range(value: str) -> float | None:
    r = float(value)
    return r if 1.0 <= r <= 10.0 else None


def _pick(matches: list, last: bool):
    return (matches[-1] if last else matches[0]) if matches else None


def parse_pair_ratings(text: str, last: bool = False) -> tuple[float, float] | None:
    """(rating A, rating B) from a judge's text (the prompt's "Rating A: " plus the reply):
    the first "Rating A: x" and "Rating B: y" (labels may be "A:", "Solution B =", ...;
    "8/10" reads as 8), else the first two "x/10"; with `last` (a reply that reasons first),
    the last ones. None when either is missing or outside [1, 10]."""
    found = [_pick(list(_SLOT_RE[s].finditer(text)), last) for s in "AB"]
    out_of_ten = [m.group(1) for m in _OUT_OF_TEN_RE.finditer(text)]
    values = ([m.group(1) for m in found] if all(found)
              else out_of_ten[-2:] if last else out_of_ten[:2])
    if len(values) < 2:
        return None
    a, b = _in_range(values[0]), _in_range(values[1])
    return None if a is None or b is None else (a, b)


def parse_point_rating(text: str, last: bool = False) -> float | None:
    """The rating from a pointwise judge's text ("Rating: " plus the reply): the first (with
    `last`, the last) "Rating: x", else "x/10"; None when missing or outside [1, 10]."""
    m = (_pick(list(_POINT_RE.finditer(text)), last)
         or _pick(list(_OUT_OF_TEN_RE.finditer(text)), last))
    return None if m is None else _in_range(m.group(1))


@dataclasses.dataclass(frozen=True)
class RatingTokens:
    """The tokens of each rating 1..10 after a prompt: `first_R` always, `second_R` (-1 for
    one-token ratings) where a rating is two tokens, all of those sharing one first token."""

    first_R: np.ndarray  # int64 [10]
    second_R: np.ndarray  # int64 [10]; -1 = one token

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, prefix: str = "\nRating A: ") -> "RatingTokens":
        base = tokenizer.encode(prefix)
        first, second = [], []
        for r in RATINGS:
            ids = tokenizer.encode(prefix + str(r))
            tail = ids[len(base):]
            if ids[:len(base)] != base or not 1 <= len(tail) <= 2:
                raise ValueError(f"rating {r} after {prefix!r} tokenizes as {ids} (prefix "
                                 f"{base}); logits mode needs the prefix's tokens first and one "
                                 "or two tokens for the rating")
            first.append(tail[0])
            second.append(tail[1] if len(tail) == 2 else -1)
        first_R, second_R = np.asarray(first), np.asarray(second)
        if len(set(first_R[second_R >= 0].tolist())) > 1:
            raise ValueError(f"two-token ratings start with different tokens "
                             f"{sorted(set(first_R[second_R >= 0].tolist()))}; logits mode "
                             "reads one continuation step")
        return cls(first_R, second_R)

    @property
    def continued_token(self) -> int:
        """The first token of the two-token ratings (any rating's token when there are none:
        the second step is then unused)."""
        two = self.second_R >= 0
        return int(self.first_R[two][0] if two.any() else self.first_R[0])


def expected_rating(logp_first_BV: np.ndarray, logp_second_BV: np.ndarray,
                    tokens: RatingTokens) -> np.ndarray:
    """E[r] over r = 1..10 from the log-probs at the rating slot and, one step later, after
    `tokens.continued_token` (see the module docstring). -> float64 [B]."""
    p1_BV = np.exp(np.asarray(logp_first_BV, np.float64))
    p2_BV = np.exp(np.asarray(logp_second_BV, np.float64))
    two_R = tokens.second_R >= 0
    mass_BR = p1_BV[:, tokens.first_R]
    cont_BR = p2_BV[:, np.maximum(tokens.second_R, 0)]
    goes_on_B = (cont_BR * two_R).sum(-1)  # P(a second rating token | the shared first)
    ends_R = ~two_R & (tokens.first_R == tokens.continued_token) & two_R.any()
    mass_BR = np.where(two_R, mass_BR * cont_BR,
                       np.where(ends_R, mass_BR * (1.0 - goes_on_B[:, None]), mass_BR))
    return (mass_BR * np.asarray(RATINGS)).sum(-1) / mass_BR.sum(-1)


@functools.partial(jax.jit, static_argnames=("model",))
def rating_logprobs(model: Decoder, params, prompts_BL: jax.Array, prompt_lengths_B: jax.Array,
                    next_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-probs of the token after each right-padded prompt `[B, V]`, and of the token
    after that once `next_B` is appended `[B, V]` (float32): a prefill and one cached step."""
    b, l = prompts_BL.shape
    apply = functools.partial(model.apply, {"params": for_forwards(model, params)})
    cache = init_cache(model.cfg, b, l + 1, stacked=model.scan_layers)
    logits_B1V, cache = apply(prompts_BL, cache=cache, prefill=True,
                              logits_at_BK=(prompt_lengths_B - 1)[:, None])
    cache = cache.replace(lengths_B=prompt_lengths_B.astype(jnp.int32))
    step_B1V, _ = apply(next_B[:, None].astype(jnp.int32), cache=cache)
    return jax.nn.log_softmax(logits_B1V[:, 0]), jax.nn.log_softmax(step_B1V[:, 0])


@dataclasses.dataclass
class JudgeStats:
    calls: int = 0  # judge calls (one per pair, or per pointwise candidate)
    prompt_tokens: int = 0  # judge prompt tokens (pair prompts carry two solutions)
    generated_tokens: int = 0  # tokens the judge wrote (0 in logits mode)
    unparseable: int = 0  # replies without valid ratings (generate mode)
    first_shown_wins: int = 0  # pairwise calls the solution shown first won
    decisive: int = 0  # pairwise calls that were not ties


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


class ModelJudge:
    """A jaxrl decoder as the tournament's judge: `judge(pairs_PR2) -> ratings_PR2`, and
    `judge.pointwise(cands_PR) -> ratings_PR` for the pointwise baselines.

    Each call renders the prompts of all non-empty slots and runs them as one batch: one
    `decode.generate` call (generate mode) or one prefill + step (logits mode). Rows are
    padded to a multiple of `row_multiple` and prompts to a multiple of `len_multiple`
    tokens, so rounds of similar size reuse one compiled program. With `debias`, each call
    shows its two solutions in a random order (recorded in `stats.first_shown_wins`). With
    `reason` (generate mode), prompts ask for reasoning before the rating lines and the last
    ratings in the reply count; give `max_new_tokens` room for it. Device calls take at most
    `max_rows` prompts (a round of more is run in chunks).
    Sampling is position-keyed with a fresh uid per judge row, so a judge built with the
    same seed and fed the same calls gives the same ratings. With a `layout`
    (`sharding.Layout`), each batch is split over its batch axes (`sharding.shard_batch`),
    as the rollouts of training are; `row_multiple` must then be a multiple of their size.
    """

    def __init__(self, model: Decoder, params, tokenizer: Tokenizer, problems: Sequence[str],
                 candidates_text: Sequence[Sequence[str]], *, mode: str = "generate",
                 debias: bool = True, reason: bool = False, seed: int = 0,
                 max_new_tokens: int = 16,
                 temperature: float = 1.0, row_multiple: int = 8, len_multiple: int = 16,
                 max_rows: int = 64, layout: sharding.Layout | None = None):
        if mode not in ("generate", "logits"):
            raise ValueError(f"mode={mode!r}; valid: 'generate', 'logits'")
        if reason and mode == "logits":
            raise ValueError("reason=True needs mode='generate': logits mode reads the rating "
                             "slot right after the prompt")
        if len(problems) != len(candidates_text):
            raise ValueError(f"{len(problems)} problems but {len(candidates_text)} candidate "
                             "lists; need one list per problem")
        if layout is not None:
            layout.check_rows(row_multiple, f"row_multiple={row_multiple}")
        self.layout = layout
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.problems, self.candidates = list(problems), [list(c) for c in candidates_text]
        self.mode, self.debias, self.reason = mode, debias, reason
        self.max_new_tokens = max_new_tokens
        self.temperature, self.row_multiple, self.len_multiple = (temperature, row_multiple,
                                                                  len_multiple)
        if max_rows < 1 or max_rows % row_multiple:
            raise ValueError(f"max_rows={max_rows} must be a positive multiple of "
                             f"row_multiple={row_multiple}")
        self.max_rows = max_rows
        self.rng, self.key, self.next_uid = np.random.default_rng(seed), jax.random.key(seed), 0
        self.stats = JudgeStats()
        if mode == "logits":
            self.pair_tokens = [RatingTokens.from_tokenizer(tokenizer, f"\nRating {s}: ")
                                for s in "AB"]
            self.point_tokens = RatingTokens.from_tokenizer(tokenizer, "\nRating: ")

    def _batch(self, prompts: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray, int]:
        rows = [encode_prompt(self.tokenizer, parts) for parts in prompts]
        n = len(rows)
        rows += [[self.tokenizer.pad_id]] * (_round_up(n, self.row_multiple) - n)
        lengths_B = np.asarray([len(r) for r in rows], np.int32)
        prompts_BL = np.full((len(rows), _round_up(lengths_B.max(), self.len_multiple)),
                             self.tokenizer.pad_id, np.int32)
        for i, row in enumerate(rows):
            prompts_BL[i, :len(row)] = row
        self.stats.prompt_tokens += int(lengths_B[:n].sum())
        return prompts_BL, lengths_B, n

    def _chunks(self, texts: list, fn) -> list:
        """`fn` on consecutive chunks of at most `max_rows` prompts, results concatenated:
        prefill attention holds [rows, heads, T, T] scores, so judge prompts (which carry
        two solutions) over many calls do not fit one device call."""
        out = []
        for i in range(0, len(texts), self.max_rows):
            out.extend(fn(texts[i:i + self.max_rows]))
        return out

    def _place(self, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
        if self.layout is None:
            return tuple(map(jnp.asarray, arrays))
        return sharding.shard_batch(arrays, self.layout)

    def _generate(self, texts: list[tuple[str, ...]]) -> list[str]:
        return self._chunks(texts, self._generate_rows)

    def _generate_rows(self, texts: list[tuple[str, ...]]) -> list[str]:
        prompts_BL, lengths_B, n = self._batch(texts)
        b = len(lengths_B)
        uids_B = np.arange(self.next_uid, self.next_uid + b, dtype=np.int32)
        self.next_uid += b
        out = generate(self.model, self.params, *self._place(prompts_BL, lengths_B, uids_B),
                       self.key, SamplingParams.make(b, self.temperature),
                       max_new_tokens=self.max_new_tokens,
                       stop_tokens=tuple(self.tokenizer.eos_ids), pad_id=self.tokenizer.pad_id)
        tokens_BN, lengths = np.asarray(out.tokens_BN), np.asarray(out.lengths_B)
        self.stats.generated_tokens += int(lengths[:n].sum())
        return [self.tokenizer.decode(tokens_BN[i, :lengths[i]].tolist()) for i in range(n)]

    def _expected(self, texts: list[tuple[str, ...]], tokens: RatingTokens) -> np.ndarray:
        return np.asarray(self._chunks(texts, lambda t: self._expected_rows(t, tokens)))

    def _expected_rows(self, texts: list[str], tokens: RatingTokens) -> np.ndarray:
        prompts_BL, lengths_B, n = self._batch(texts)
        next_B = np.full((len(lengths_B),), tokens.continued_token, np.int32)
        logp1, logp2 = rating_logprobs(self.model, self.params,
                                       *self._place(prompts_BL, lengths_B, next_B))
        return expected_rating(np.asarray(logp1)[:n], np.asarray(logp2)[:n], tokens)

    def _shown_ratings(self, p_C, first_C, second_C) -> np.ndarray:
        """Ratings `[C, 2]` of (shown first, shown second) for each call."""
        texts = [(self.problems[p], self.candidates[p][f], self.candidates[p][s])
                 for p, f, s in zip(p_C, first_C, second_C)]
        if self.mode == "logits":
            return np.stack([self._expected([pair_prompt_parts(*t, slot) for t in texts],
                                            tokens)
                             for slot, tokens in zip("AB", self.pair_tokens)], -1)
        slot, lead = (None, "") if self.reason else ("A", "Rating A: ")
        replies = self._generate([pair_prompt_parts(*t, slot) for t in texts])
        parsed = [parse_pair_ratings(lead + reply, last=self.reason) for reply in replies]
        self.stats.unparseable += sum(r is None for r in parsed)
        return np.asarray([UNPARSED_PAIR if r is None else r for r in parsed], np.float64)

    def _check_rows(self, slots: np.ndarray, what: str) -> None:
        if slots.shape[0] != len(self.problems):
            raise ValueError(f"{what} has {slots.shape[0]} rows; this judge holds "
                             f"{len(self.problems)} problems")

    def __call__(self, pairs_PR2: np.ndarray) -> np.ndarray:
        pairs_PR2 = np.asarray(pairs_PR2)
        self._check_rows(pairs_PR2, "pairs_PR2")
        ratings_PR2 = np.full(pairs_PR2.shape, np.nan)
        p_C, r_C = np.nonzero(pairs_PR2[..., 0] >= 0)
        if not len(p_C):
            return ratings_PR2
        a_C, b_C = pairs_PR2[p_C, r_C, 0], pairs_PR2[p_C, r_C, 1]
        swap_C = self.rng.random(len(a_C)) < 0.5 if self.debias else np.zeros(len(a_C), bool)
        shown_C2 = self._shown_ratings(p_C, np.where(swap_C, b_C, a_C), np.where(swap_C, a_C, b_C))
        self.stats.calls += len(p_C)
        self.stats.first_shown_wins += int((shown_C2[:, 0] > shown_C2[:, 1]).sum())
        self.stats.decisive += int((shown_C2[:, 0] != shown_C2[:, 1]).sum())
        ratings_PR2[p_C, r_C] = np.where(swap_C[:, None], shown_C2[:, ::-1], shown_C2)
        return ratings_PR2

    def pointwise(self, cands_PR: np.ndarray) -> np.ndarray:
        cands_PR = np.asarray(cands_PR)
        self._check_rows(cands_PR, "cands_PR")
        ratings_PR = np.full(cands_PR.shape, np.nan)
        p_C, r_C = np.nonzero(cands_PR >= 0)
        if not len(p_C):
            return ratings_PR
        texts = [point_prompt_parts(self.problems[p], self.candidates[p][c], self.reason)
                 for p, c in zip(p_C, cands_PR[p_C, r_C])]
        if self.mode == "logits":
            ratings_C = self._expected(texts, self.point_tokens)
        else:
            lead = "" if self.reason else "Rating: "
            parsed = [parse_point_rating(lead + reply, last=self.reason)
                      for reply in self._generate(texts)]
            self.stats.unparseable += sum(r is None for r in parsed)
            ratings_C = np.asarray([UNPARSED_POINT if r is None else r for r in parsed])
        self.stats.calls += len(p_C)
        ratings_PR[p_C, r_C] = ratings_C
        return ratings_PR
