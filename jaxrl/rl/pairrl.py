"""V1-PairRL (arXiv 2603.04304): one model trained as generator and as its own pairwise
judge, inside the GRPO step.

    step = make_step(model, rl, rollout_cfg, reward, pairrl_cfg, tokenizer, ...)

Per step, after the generator's rollouts and their task rewards (grpo.py, unchanged):

1. `select_pairs`: per prompt group, `pair_slots` pairs of its G solutions, never two
   incorrect ones (the paper: this blocks the "empty solution" loop), shown in random order.
2. `judge_prompts`: the tokens of `verify.judge.pair_prompt(problem, A, B)` (or
   `point_prompt` for PointRL) assembled from constant template pieces, tokenized once on
   the host, and the prompt and completion token arrays. V1-Infer tokenizes its judge
   prompts part by part too (`judge.encode_prompt`), so a BPE's merges across the joins
   cannot make them differ: the policy is judged with the tokens it was trained on, as far
   as its problem and solution texts tokenize back to its own tokens.
3. The same model and engine write `judge_generations` judge rollouts per prompt: plain
   decoding, or DAS with `rollout.speculative` (`das.rollout_new_prompts`: each pair's judge
   prompt repeats its solutions verbatim, which the drafter can copy; the tokens are plain
   decoding's either way); `parse_ratings` reads them; `verifier_rewards` scores them against the
   checker's verdicts; `verifier_advantages` centres them on the batch mean.
4. One update on J = J_gen + lambda * J_verif (`grpo.update_phase` with `ExtraRows`).

How lambda meets token-mean: each role's PPO-clip loss is aggregated over its own rows of
the minibatch (`rl.loss_agg`, token-mean by default: generator tokens averaged over
generator tokens, judge tokens over judge tokens), and the minibatch steps on
grad(gen) + lambda * grad(verif), the two gradients taken by separate `value_and_grad`s
(one joint graph lets XLA fuse the generator's ops differently, a few ulps off standard
RL's). A token-mean over the union would give the verifier a weight that
moves with the ratio of judge to solution tokens (judge replies are a dozen tokens) and
would change the generator's normaliser whenever judge rows exist, so lambda = 0 would not
be standard RL; with the split, lambda = 0 leaves the generator's update bit for bit that
of `grpo.make_step` (tests/rl/test_pairrl.py).

Shape letters: docs/DESIGN.md#glossary, plus S pair slots per prompt, J judge rows
(P x judge_generations), C candidate pairs of a group (G (G - 1) / 2) or canonical judge
replies in `parse_ratings`, K rated solutions per judge row (2 pairwise, 1 pointwise).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl.config_utils import at_least, one_of
from jaxrl.models.decoder import Decoder
from jaxrl.models.tokenizer import Tokenizer
from jaxrl.rl import grpo
from jaxrl.rollout import das
from jaxrl.rollout.decode import Rollout, generate
from jaxrl.rollout.sampling import SamplingParams
from jaxrl.tasks import batches
from jaxrl.tasks.base import EOS_ID, TOKENIZER, Task
from jaxrl.verify import judge

VERIFIERS = ("pairwise", "pointwise", "none")
# Salts of state.key next to grpo's 0, 1, 2: the judge phase never consumes the
# generator's keys, so it leaves the generator's randomness as standard RL's.
_PAIR_SALT, _JUDGE_SALT = 3, 4
# The random stream of `format_batch` (next to the task's problem stream of the step).
_FORMAT_STREAM = 5
# The rating band that earns reward: |v - y| <= 0.2 (the paper's sparsity threshold; a
# judge that always says 5 or 6 earns 0, so the reward does not collapse to ratings of 0.5).
_BAND = 0.2
# What a judge writes after the prompt's "Rating A: " (judge.PAIR_INSTRUCTION's format),
# and after a pointwise prompt's "Rating: ".
_PAIR_REPLY = "{}\nRating B: {}"
_POINT_REPLY = "{}"


@dataclasses.dataclass(frozen=True)
class PairRLConfig:
    """`config.pairrl` (configs/grpo.py explains each field)."""

    verifier: str
    lam: float
    pair_slots: int
    mixed_pairs_first: bool
    judge_generations: int
    judge_max_new_tokens: int

    def __post_init__(self):
        p = "config.pairrl"
        one_of(f"{p}.verifier", self.verifier, VERIFIERS)
        at_least(f"{p}.lam", self.lam, 0)
        at_least(f"{p}.pair_slots", self.pair_slots, 1)
        at_least(f"{p}.judge_generations", self.judge_generations, 1)
        if self.judge_generations % self.pair_slots:
            raise ValueError(f"{p}.judge_generations={self.judge_generations} must be a "
                             f"multiple of {p}.pair_slots={self.pair_slots}: each pair is "
                             "judged judge_generations / pair_slots times")
        at_least(f"{p}.judge_max_new_tokens", self.judge_max_new_tokens, 1)

    @property
    def judges_per_pair(self) -> int:
        return self.judge_generations // self.pair_slots


# ---- pairs ----

def select_pairs(correct_PG: jax.Array, key: jax.Array, slots: int,
                 mixed_first: bool = False):
    """`(pairs_PS2, valid_PS)`: per prompt, `slots` pairs of its solutions (indices into the
    group, the one shown first at [..., 0]).

    The rule: the group's G (G - 1) / 2 unordered pairs (i < j) are enumerated in
    lexicographic order; those with at least one correct solution are eligible
    (correct-incorrect and correct-correct, never incorrect-incorrect); each pair draws a
    uniform priority from `key`, and the `slots` eligible pairs of lowest priority are
    taken, a uniformly random subset. With `mixed_first`, every correct-incorrect pair
    ranks before every correct-correct one (random within each kind): the pairs whose
    order the judge must learn fill the slots first, where a group mostly agrees. With
    fewer eligible pairs than slots the remaining slots hold ineligible pairs and are
    invalid. Each chosen pair is then shown in a random order (a fair coin from `key`)."""
    p, g = correct_PG.shape
    i_C, j_C = np.triu_indices(g, 1)
    if not 1 <= slots <= len(i_C):
        raise ValueError(f"pair_slots={slots}: a group of G={g} solutions has {len(i_C)} "
                         "pairs; use 1 .. that many")
    eligible_PC = correct_PG[:, i_C] | correct_PG[:, j_C]
    pick_key, order_key = jax.random.split(key)
    rank_PC = 2 * ~eligible_PC  # the draws are [0, 1): ranks never mix
    if mixed_first:
        rank_PC = rank_PC + (correct_PG[:, i_C] & correct_PG[:, j_C])
    priority_PC = jax.random.uniform(pick_key, eligible_PC.shape) + rank_PC
    chosen_PS = jnp.argsort(priority_PC, axis=1)[:, :slots]
    valid_PS = jnp.take_along_axis(eligible_PC, chosen_PS, axis=1)
    first_PS, second_PS = jnp.asarray(i_C)[chosen_PS], jnp.asarray(j_C)[chosen_PS]
    swap_PS = jax.random.bernoulli(order_key, 0.5, (p, slots))
    pairs_PS2 = jnp.stack([jnp.where(swap_PS, second_PS, first_PS),
                           jnp.where(swap_PS, first_PS, second_PS)], -1)
    return pairs_PS2.astype(jnp.int32), valid_PS


# ---- judge prompts ----

@dataclasses.dataclass(frozen=True)
class JudgeTemplate:
    """The token ids a judge prompt is built from, and every reply that parses.

    `pieces`: the constant text of `judge.pair_prompt` around the problem and the two
    solutions (4 pieces), or of `judge.point_prompt` around the problem and the solution
    (3), tokenized once. `replies`: the tokens of each well-formed reply, with `ratings` the
    ratings it gives (pairwise "a\\nRating B: b", a and b in 1..10; pointwise "r").
    """

    pairwise: bool
    pieces: tuple[tuple[int, ...], ...]
    replies: tuple[tuple[int, ...], ...]
    ratings: tuple[tuple[int, ...], ...]

    @classmethod
    def make(cls, tokenizer: Tokenizer, verifier: str) -> "JudgeTemplate":
        one_of("verifier", verifier, ("pairwise", "pointwise"))
        pairwise = verifier == "pairwise"
        # The template's constant parts, tokenized as V1-Infer's `judge.encode_prompt` does.
        parts = (judge.pair_prompt_parts("", "", "") if pairwise
                 else judge.point_prompt_parts("", ""))
        pieces = tuple(tuple(tokenizer.encode(t)) for t in parts[::2])
        ratings = ([(a, b) for a in judge.RATINGS for b in judge.RATINGS] if pairwise
                   else [(r,) for r in judge.RATINGS])
        fmt = _PAIR_REPLY if pairwise else _POINT_REPLY
        replies = tuple(tuple(tokenizer.encode(fmt.format(*r))) for r in ratings)
        if any(set(r) & set(tokenizer.eos_ids) for r in replies):
            raise ValueError("a judge reply tokenizes with a stop token; replies must not")
        return cls(pairwise, pieces, replies, tuple(ratings))

    @property
    def longest_reply(self) -> int:
        return max(map(len, self.replies))

    def prompt_len(self, prompt_len: int, solution_len: int) -> int:
        """The static length of a judge prompt for prompts and solutions of these widths."""
        return sum(map(len, self.pieces)) + prompt_len + (2 if self.pairwise else 1) * solution_len


def concat_ragged(parts, pad_id: int):
    """`(tokens_BT, lengths_B)`: each row's parts, `(tokens_BX, lengths_B)` right-padded or
    a constant `[X]` token array, joined with their padding squeezed out and right-padded to
    T, the sum of the parts' widths."""
    b = next(t.shape[0] for t, _ in parts if t.ndim == 2)
    tokens, lengths = [], []
    for t, n in parts:
        t = jnp.asarray(t, jnp.int32)
        if t.ndim == 1:
            t, n = jnp.broadcast_to(t, (b, t.shape[0])), jnp.full((b,), t.shape[0], jnp.int32)
        tokens.append(t)
        lengths.append(jnp.asarray(n, jnp.int32))
    widths = [t.shape[1] for t in tokens]
    src_BT = jnp.concatenate(tokens, axis=1)
    offset_K = jnp.asarray(np.cumsum([0] + widths[:-1]), jnp.int32)
    len_BK = jnp.stack(lengths, 1)
    end_BK = jnp.cumsum(len_BK, 1)
    start_BK = end_BK - len_BK
    j_T = jnp.arange(src_BT.shape[1], dtype=jnp.int32)
    # Output position j lies in the first part that ends after it (empty parts end where
    # they start, so none holds j).
    part_BT = jnp.minimum((end_BK[:, None, :] <= j_T[None, :, None]).sum(-1), len(parts) - 1)
    at_BT = (offset_K[part_BT] + j_T[None] - jnp.take_along_axis(start_BK, part_BT, 1))
    total_B = end_BK[:, -1]
    out_BT = jnp.take_along_axis(src_BT, jnp.clip(at_BT, 0, src_BT.shape[1] - 1), 1)
    return jnp.where(j_T[None] < total_B[:, None], out_BT, pad_id), total_B


def judge_prompts(template: JudgeTemplate, problems_BL, problem_lengths_B, solutions,
                  pad_id: int):
    """`(judge_prompts_BT, lengths_B)`: row b's judge prompt for its problem and its
    solutions (`solutions`: one `(tokens_BN, lengths_B)` for pointwise, two, shown as A and
    B, for pairwise), the solution lengths without the stop token."""
    segments = [(problems_BL, problem_lengths_B), *solutions]
    if len(segments) != len(template.pieces) - 1:
        raise ValueError(f"{len(solutions)} solutions for a "
                         f"{'pairwise' if template.pairwise else 'pointwise'} template")
    parts = [(np.asarray(template.pieces[0], np.int32), None)]
    for seg, piece in zip(segments, template.pieces[1:]):
        parts += [seg, (np.asarray(piece, np.int32), None)]
    return concat_ragged(parts, pad_id)


def format_batch(task: Task, seed: int, step: int, n: int) -> tuple:
    """An SFT batch that teaches the judge's reply format and nothing else: `n` judge
    prompts (even rows pairwise, odd rows pointwise) for step `step`'s training problems,
    each shown solution the reference or the reference with one digit of its answer changed
    (a coin flip each), and replies with ratings drawn uniformly from 1..10, whatever the
    solutions' correctness. A policy warmed up on it writes parseable ratings that carry no
    judgement (a random judge); judging can then only come from the verifier reward.
    Padded to fixed widths (the longest pair prompt of the task's budgets; the longest
    reply plus EOS): one compile. Returns the SFT step's arrays, as
    `EmbeddedPrompts.sft_batch` does."""
    rng = np.random.default_rng([seed, step, _FORMAT_STREAM])

    def shown(prob) -> str:
        if rng.random() < 0.5:
            return prob.solution
        digits = [i for i in range(prob.solution.rindex("#") + 1, len(prob.solution))
                  if prob.solution[i].isdigit()]
        if not digits:  # no digit in the answer: shown unchanged
            return prob.solution
        i = digits[rng.integers(len(digits))]
        other = str((int(prob.solution[i]) + rng.integers(1, 10)) % 10)
        return prob.solution[:i] + other + prob.solution[i + 1:]

    prompts, replies = [], []
    for row, prob in enumerate(batches.train_problems(task, seed, step, n)):
        if row % 2 == 0:
            prompts.append(judge.pair_prompt(prob.prompt, shown(prob), shown(prob)))
            replies.append(_PAIR_REPLY.format(*rng.integers(1, 11, size=2)))
        else:
            prompts.append(judge.point_prompt(prob.prompt, shown(prob)))
            replies.append(_POINT_REPLY.format(rng.integers(1, 11)))
    template = JudgeTemplate.make(TOKENIZER, "pairwise")
    prompt_len, solution_len = batches.budgets(task)
    prompts_PL, prompt_lengths_P = batches.pad_rows(
        [TOKENIZER.encode(t) for t in prompts], template.prompt_len(prompt_len, solution_len),
        TOKENIZER.pad_id)
    replies_PN, reply_lengths_P = batches.pad_rows(
        [TOKENIZER.encode(t) + [EOS_ID] for t in replies], template.longest_reply + 1,
        TOKENIZER.pad_id)
    return prompts_PL, prompt_lengths_P, replies_PN, reply_lengths_P


# ---- ratings and rewards ----

def parse_ratings(template: JudgeTemplate, tokens_BN, lengths_B, finished_B):
    """`(ratings_BK float32, parsed_B)`: a judge rollout parses iff it is exactly one of the
    template's replies followed by a stop token (pairwise "7\\nRating B: 4" then EOS after
    the prompt's "Rating A: "); then `ratings_BK` are its ratings, else 0. Stricter than
    `judge.parse_pair_ratings`, which reads every reply this accepts the same way."""
    w = template.longest_reply
    n = tokens_BN.shape[1]
    if n < w:
        tokens_BN = jnp.pad(tokens_BN, ((0, 0), (0, w - n)), constant_values=-1)
    replies_CW = np.full((len(template.replies), w), -1, np.int32)
    for c, r in enumerate(template.replies):
        replies_CW[c, :len(r)] = r
    reply_len_C = np.asarray([len(r) for r in template.replies], np.int32)
    in_reply_CW = np.arange(w)[None] < reply_len_C[:, None]
    same_BCW = (tokens_BN[:, None, :w] == replies_CW[None]) | ~in_reply_CW[None]
    match_BC = (same_BCW.all(-1) & (lengths_B[:, None] == reply_len_C[None] + 1)
                & finished_B[:, None])
    parsed_B = match_BC.any(-1)
    ratings_BK = jnp.asarray(template.ratings, jnp.float32)[jnp.argmax(match_BC, -1)]
    return jnp.where(parsed_B[:, None], ratings_BK, 0.0), parsed_B


def verifier_rewards(ratings_BK, verdicts_BK, parsed_B):
    """float32 `[B]`: the mean over the K rated solutions of 1(|v - y| <= 0.2) (1 - |v - y|),
    v = (rating - 1) / 9, y the checker's verdict (0 or 1); 0 for an unparsed rollout.

    Pairwise (K = 2) this is the paper's 1/2 * sum over the pair. Pointwise (K = 1) it is the
    one term without the 1/2, so that both judges earn 1 for a perfect verdict and the two
    rewards (and lambda) are on one scale."""
    d_BK = jnp.abs((ratings_BK - 1.0) / 9.0 - verdicts_BK.astype(jnp.float32))
    term_BK = jnp.where(d_BK <= _BAND, 1.0 - d_BK, 0.0)
    return jnp.where(parsed_B, term_BK.mean(-1), 0.0)


def verifier_advantages(rewards_B, valid_B):
    """REINFORCE with the batch-mean baseline: `r - mean(r over valid rows)`, no std
    normalization; 0 at invalid rows."""
    valid_B = valid_B.astype(jnp.float32)
    mean = (rewards_B * valid_B).sum() / jnp.maximum(valid_B.sum(), 1.0)
    return jnp.where(valid_B > 0, rewards_B - mean, 0.0)


def _mean_where(x_B, m_B):
    m_B = m_B.astype(jnp.float32)
    return (x_B.astype(jnp.float32) * m_B).sum() / jnp.maximum(m_B.sum(), 1.0)


def judge_metrics(ratings_BK, verdicts_BK, parsed_B, valid_B, rewards_B, lengths_B):
    """Per-step verifier metrics over the valid judge rows (see the keys)."""
    ok_B = parsed_B & valid_B
    m = {"verifier/reward": _mean_where(rewards_B, valid_B),
         "verifier/parse_rate": _mean_where(parsed_B, valid_B),
         "verifier/valid_frac": valid_B.astype(jnp.float32).mean(),
         "verifier/generated_tokens": jnp.where(valid_B, lengths_B, 0).sum()}
    if ratings_BK.shape[1] == 1:  # pointwise: the rating on the verdict's side of 5.5
        m["verifier/accuracy"] = _mean_where((ratings_BK[:, 0] > 5.5) == verdicts_BK[:, 0],
                                             ok_B)
        return m
    a_B, b_B = ratings_BK[:, 0], ratings_BK[:, 1]
    mixed_B = valid_B & (verdicts_BK[:, 0] != verdicts_BK[:, 1])
    right_B = jnp.where(verdicts_BK[:, 0], a_B > b_B, b_B > a_B)
    m.update({
        # Over the judge rows of correct-incorrect pairs; an unparsed reply counts as wrong.
        "verifier/accuracy_ci": _mean_where(parsed_B & right_B, mixed_B),
        "verifier/tie_rate": _mean_where(a_B == b_B, ok_B),
        "verifier/first_win_rate": _mean_where(a_B > b_B, ok_B & (a_B != b_B)),
    })
    return m


# ---- the step ----

def judge_phase(model: Decoder, rl: grpo.RLConfig, cfg: PairRLConfig, template: JudgeTemplate,
                rollout_cfg: das.RolloutConfig, state, prompts_PL, prompt_lengths_P,
                rollout: Rollout, rewards_B, *, stop_tokens: tuple[int, ...], pad_id: int):
    """`(grpo.ExtraRows, metrics)`: the judge rows of this step's generator rollouts.

    The checker's verdict of a solution is `reward >= 1` (the task reward is 1 for a correct
    answer plus `format_coef < 1` times the format bonus)."""
    p, g = prompts_PL.shape[0], rl.num_generations
    correct_PG = (rewards_B >= 1.0).reshape(p, g)
    pairs_PS2, valid_PS = select_pairs(correct_PG, state.key(_PAIR_SALT), cfg.pair_slots,
                                       cfg.mixed_pairs_first)
    k = 2 if template.pairwise else 1  # PointRL rates the first-shown solution of each pair
    rep = cfg.judges_per_pair
    rows_JK = (jnp.arange(p)[:, None, None] * g + pairs_PS2[..., :k]).reshape(-1, k)
    rows_JK = jnp.repeat(rows_JK, rep, axis=0)
    valid_J = jnp.repeat(valid_PS.reshape(-1), rep)
    prompt_J = jnp.repeat(jnp.arange(p), cfg.judge_generations)
    # A solution's text is its completion before the stop token.
    solution_len_B = rollout.lengths_B - rollout.finished_B.astype(jnp.int32)
    solutions = [(rollout.tokens_BN[rows_JK[:, i]], solution_len_B[rows_JK[:, i]])
                 for i in range(k)]
    prompts_JT, prompt_len_J = judge_prompts(template, prompts_PL[prompt_J],
                                             prompt_lengths_P[prompt_J], solutions, pad_id)
    j = prompts_JT.shape[0]
    args = (model, state.params, prompts_JT, prompt_len_J, jnp.arange(j, dtype=jnp.int32),
            state.key(_JUDGE_SALT), SamplingParams.make(j, rl.temperature, rl.top_k, rl.top_p))
    kw = dict(max_new_tokens=cfg.judge_max_new_tokens, stop_tokens=stop_tokens, pad_id=pad_id)
    spec_metrics = {}
    if rollout_cfg.speculative:  # the rows judging one pair share its prompt: one group
        out, stats = das.rollout_new_prompts(*args, cfg=rollout_cfg, group=rep, **kw)
        spec_metrics = {f"verifier/{k}": v for k, v in das.metrics(stats, out.lengths_B).items()}
    else:
        out = generate(*args, **kw)
    ratings_JK, parsed_J = parse_ratings(template, out.tokens_BN, out.lengths_B, out.finished_B)
    verdicts_JK = correct_PG.reshape(-1)[rows_JK]
    rewards_J = verifier_rewards(ratings_JK, verdicts_JK, parsed_J)
    adv_J = verifier_advantages(rewards_J, valid_J)
    n = cfg.judge_max_new_tokens
    mask_JN = (jnp.arange(n)[None] < out.lengths_B[:, None]) & valid_J[:, None]
    extra = grpo.ExtraRows(prompts_JT, prompt_len_J, out, adv_J, mask_JN.astype(jnp.float32))
    metrics = judge_metrics(ratings_JK, verdicts_JK, parsed_J, valid_J, rewards_J,
                            out.lengths_B)
    metrics["verifier/prompt_tokens"] = jnp.where(valid_J, prompt_len_J, 0).sum()
    return extra, {**metrics, **spec_metrics}


def make_step(model: Decoder, rl: grpo.RLConfig, rollout_cfg: das.RolloutConfig, reward,
              cfg: PairRLConfig, tokenizer: Tokenizer, *, max_new_tokens: int,
              stop_tokens: tuple[int, ...], pad_id: int, prompt_len: int, layout=None,
              state_sharding=None):
    """`grpo.make_step`'s step, with PairRL's (or PointRL's) judge phase between the reward
    and the update. `prompt_len` is the width of the prompts the step will get, for the
    static judge prompt length (checked against the model's positions here). `layout` and
    `state_sharding` as in `grpo.make_step` (the judge rollouts themselves are not yet
    constrained to the batch axes)."""
    if cfg.verifier == "none":
        raise ValueError("config.pairrl.verifier='none' is standard RL: use grpo.make_step")
    if rl.format_coef >= 1:
        raise ValueError(f"config.rl.format_coef={rl.format_coef}: PairRL reads a solution "
                         "as correct when its reward is >= 1, so the format bonus must be < 1")
    template = JudgeTemplate.make(tokenizer, cfg.verifier)
    if cfg.judge_max_new_tokens < template.longest_reply + 1:
        raise ValueError(f"config.pairrl.judge_max_new_tokens={cfg.judge_max_new_tokens}: "
                         f"the longest judge reply is {template.longest_reply} tokens plus "
                         "the stop token")
    g = rl.num_generations
    if cfg.pair_slots > g * (g - 1) // 2:
        raise ValueError(f"config.pairrl.pair_slots={cfg.pair_slots}: a group of "
                         f"rl.num_generations={g} has {g * (g - 1) // 2} pairs")
    if (rl.num_prompts * cfg.judge_generations) % rl.num_minibatches:
        raise ValueError(f"config.rl.num_minibatches={rl.num_minibatches} must divide the "
                         f"judge rows, num_prompts * pairrl.judge_generations = "
                         f"{rl.num_prompts * cfg.judge_generations}")
    judge_len = template.prompt_len(prompt_len, max_new_tokens)
    limit = model.cfg.max_position_embeddings
    if judge_len + cfg.judge_max_new_tokens > limit:
        raise ValueError(f"a judge prompt ({judge_len} tokens) plus config.pairrl."
                         f"judge_max_new_tokens={cfg.judge_max_new_tokens} exceeds the "
                         f"model's max_position_embeddings={limit}")
    phase = functools.partial(judge_phase, model, rl, cfg, template, rollout_cfg,
                              stop_tokens=stop_tokens, pad_id=pad_id)
    return grpo.make_step(model, rl, rollout_cfg, reward, max_new_tokens=max_new_tokens,
                          stop_tokens=stop_tokens, pad_id=pad_id, layout=layout,
                          state_sharding=state_sharding, judge_phase=phase, judge_coef=cfg.lam)
