"""PairRL's pieces against hand-worked values and V1-Infer's own prompts and parser: pair
selection, judge prompts built from token arrays, strict rating parsing, the verifier reward
and advantages; then the step: lambda = 0 is standard RL bit for bit, and a PairRL step
reports its metrics."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bpe import train_bpe
from configs import config_dict, rl_config, rollout_config, train_config
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.tokenizer import CharTokenizer, HFTokenizer
from jaxrl.rl import grpo, pairrl, state as state_lib
from jaxrl.rl.sft import SFTConfig
from jaxrl.rollout import das
from jaxrl.rollout.decode import Rollout
from jaxrl.tasks import batches
from jaxrl.tasks.prompts import TaskConfig
from jaxrl.verify import judge

TOK = CharTokenizer()
EOS, PAD = TOK.eos_ids[0], TOK.pad_id
PAIR = pairrl.JudgeTemplate.make(TOK, "pairwise")
POINT = pairrl.JudgeTemplate.make(TOK, "pointwise")


def padded(texts, width, fill=PAD, eos=()):
    """Token rows of `texts` (each followed by `eos` where given), right-padded with `fill`."""
    rows = [TOK.encode(t) + list(e) for t, e in zip(texts, eos or [()] * len(texts))]
    out = np.full((len(rows), width), fill, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return jnp.asarray(out), jnp.asarray([len(r) for r in rows], jnp.int32)


# ---- pairs ----

def unordered(pairs_S2, valid_S):
    return sorted(tuple(sorted(map(int, p))) for p, v in zip(pairs_S2, valid_S) if v)


def test_pair_selection_on_a_hand_worked_group():
    # Solutions 0 and 3 correct: of the 6 pairs, (1, 2) is incorrect-incorrect.
    correct_PG = jnp.asarray([[True, False, False, True], [False] * 4, [True] * 4])
    pairs_PS2, valid_PS = pairrl.select_pairs(correct_PG, jax.random.key(0), 6)
    assert unordered(pairs_PS2[0], valid_PS[0]) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    # The one unfilled slot holds the ineligible pair, masked.
    assert unordered(pairs_PS2[0], ~valid_PS[0]) == [(1, 2)]
    assert not valid_PS[1].any()
    assert unordered(pairs_PS2[2], valid_PS[2]) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_pair_subsets_are_uniform_and_orders_fair():
    # 2000 copies of the hand-worked group under one key are 2000 independent draws.
    n, s = 2000, 3
    correct_PG = jnp.tile(jnp.asarray([[True, False, False, True]]), (n, 1))
    pairs_PS2, valid_PS = pairrl.select_pairs(correct_PG, jax.random.key(1), s)
    pairs_PS2 = np.asarray(pairs_PS2)
    assert np.asarray(valid_PS).all()  # 5 eligible pairs fill 3 slots
    lo, hi = pairs_PS2.min(-1), pairs_PS2.max(-1)
    assert not ((lo == 1) & (hi == 2)).any()
    assert all(len({(a, b) for a, b in zip(lo[p], hi[p])}) == s for p in range(n))
    # Each eligible pair is in a subset with probability 3/5: 1200 of 2000, sd 21.9; the
    # bounds are 6 sd, crossed with probability < 1e-8 for a correct sampler.
    counts = {pair: int(((lo == pair[0]) & (hi == pair[1])).sum())
              for pair in [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]}
    assert all(abs(c - 1200) < 132 for c in counts.values()), counts
    # The smaller index is shown first with probability 1/2: 3000 of 6000, sd 38.7.
    assert abs(int((pairs_PS2[..., 0] < pairs_PS2[..., 1]).sum()) - 3000) < 232


def test_mixed_pairs_first_fills_the_slots_with_correct_incorrect_pairs():
    # Solutions 0, 2, 3 correct: pairs (0, 1), (1, 2), (1, 3) are correct-incorrect, (0, 2),
    # (0, 3), (2, 3) correct-correct. 3 slots take the three mixed pairs under every key; 4
    # take them and one correct-correct pair, each of the three equally often.
    correct_PG = jnp.tile(jnp.asarray([[True, False, True, True]]), (600, 1))
    mixed = [(0, 1), (1, 2), (1, 3)]
    pairs_PS2, valid_PS = pairrl.select_pairs(correct_PG, jax.random.key(2), 3, True)
    assert all(unordered(p, v) == mixed for p, v in zip(pairs_PS2, valid_PS))
    pairs_PS2, valid_PS = pairrl.select_pairs(correct_PG, jax.random.key(3), 4, True)
    extra = [sorted(set(unordered(p, v)) - set(mixed)) for p, v in zip(pairs_PS2, valid_PS)]
    assert all(len(e) == 1 and e[0] in [(0, 2), (0, 3), (2, 3)] for e in extra)
    # Each 200 of 600 expected, sd 11.5; 6 sd bounds.
    for pair in [(0, 2), (0, 3), (2, 3)]:
        assert abs(sum(e == [pair] for e in extra) - 200) < 70
    # Uniform (the default) takes mixed pairs at their share, 3 of the 6 eligible: a mean of
    # 0.5 over 600 groups, sd 0.0091 (hypergeometric); the bounds are 11 sd.
    pairs_PS2, valid_PS = pairrl.select_pairs(correct_PG, jax.random.key(2), 3)
    share = np.mean([len(set(unordered(p, v)) & set(mixed)) / 3
                     for p, v in zip(pairs_PS2, valid_PS)])
    assert 0.4 < share < 0.6


def test_more_slots_than_pairs_is_refused():
    with pytest.raises(ValueError, match="pair_slots=7: a group of G=4 solutions has 6"):
        pairrl.select_pairs(jnp.ones((1, 4), bool), jax.random.key(0), 7)


# ---- judge prompts ----

PROBLEMS = ["sort:5,3,9,1\n", "sort:2\n"]
SOLUTIONS_A = ["1,3,9,5\n1,3,5,9\n#1,3,5,9", "#2"]
SOLUTIONS_B = ["#9", ""]  # an empty solution: a completion that is only the stop token


def test_pair_prompts_are_the_tokens_of_judge_pair_prompt():
    problems_BL, plen_B = padded(PROBLEMS, 16, fill=7)  # padding of any value is skipped
    a_BN, a_len_B = padded(SOLUTIONS_A, 30, fill=9, eos=[[EOS]] * 2)
    b_BN, b_len_B = padded(SOLUTIONS_B, 30, fill=PAD, eos=[[EOS]] * 2)
    # Completion lengths count the stop token; the solutions shown exclude it.
    prompts_BT, lengths_B = pairrl.judge_prompts(
        PAIR, problems_BL, plen_B, [(a_BN, a_len_B - 1), (b_BN, b_len_B - 1)], PAD)
    assert prompts_BT.shape == (2, PAIR.prompt_len(16, 30))
    for i in range(2):
        want = TOK.encode(judge.pair_prompt(PROBLEMS[i], SOLUTIONS_A[i], SOLUTIONS_B[i]))
        assert int(lengths_B[i]) == len(want)
        assert np.asarray(prompts_BT[i, :len(want)]).tolist() == want
        assert (np.asarray(prompts_BT[i, len(want):]) == PAD).all()


def test_point_prompts_are_the_tokens_of_judge_point_prompt():
    problems_BL, plen_B = padded(PROBLEMS, 16)
    a_BN, a_len_B = padded(SOLUTIONS_A, 30, eos=[[EOS]] * 2)
    prompts_BT, lengths_B = pairrl.judge_prompts(POINT, problems_BL, plen_B,
                                                 [(a_BN, a_len_B - 1)], PAD)
    for i in range(2):
        want = TOK.encode(judge.point_prompt(PROBLEMS[i], SOLUTIONS_A[i]))
        assert np.asarray(prompts_BT[i, :int(lengths_B[i])]).tolist() == want


def test_bpe_judge_prompts_are_v1_infers_tokens_and_every_reply_parses():
    """With a byte-level BPE trained on judge prompts (so it merges runs of newlines), the
    tokens PairRL builds (the template's pieces joined with the problem's and solutions' own
    tokens) are exactly those V1-Infer's judge feeds the model (`judge.encode_prompt`) and
    decode to `judge.pair_prompt`'s text. The text tokenized whole is different (the
    problem's last newline merges with the template's next two), which is why V1-Infer
    tokenizes part by part. Every well-formed reply parses under the BPE template."""
    replies = [f"{a}\nRating B: {b}" for a in judge.RATINGS for b in judge.RATINGS]
    corpus = [judge.pair_prompt(p, a, b) + r for p, a, b in zip(PROBLEMS, SOLUTIONS_A,
                                                                SOLUTIONS_B) for r in replies]
    tok = HFTokenizer(train_bpe(corpus, ["<pad>", "</s>"], vocab_size=400), (1,), 0)
    template = pairrl.JudgeTemplate.make(tok, "pairwise")
    rows = lambda texts: batches.pad_rows([tok.encode(t) for t in texts], 40, 0)  # noqa: E731
    (problems_BL, plen_B), a, b = rows(PROBLEMS), rows(SOLUTIONS_A), rows(SOLUTIONS_B)
    prompts_BT, lengths_B = pairrl.judge_prompts(template, problems_BL, plen_B, [a, b], 0)
    whole_differs = False
    for i in range(len(PROBLEMS)):
        parts = judge.pair_prompt_parts(PROBLEMS[i], SOLUTIONS_A[i], SOLUTIONS_B[i])
        want = judge.encode_prompt(tok, parts)
        got = np.asarray(prompts_BT[i, :int(lengths_B[i])]).tolist()
        assert got == want
        assert tok.decode(got) == "".join(parts) == judge.pair_prompt(*parts[1::2])
        whole_differs |= tok.encode("".join(parts)) != want
    assert whole_differs
    tokens_BN, reply_len_B = batches.pad_rows([tok.encode(r) + [1] for r in replies], 16, 0)
    ratings_BK, parsed_B = pairrl.parse_ratings(template, jnp.asarray(tokens_BN),
                                                jnp.asarray(reply_len_B),
                                                jnp.ones(len(replies), bool))
    assert bool(parsed_B.all())
    assert np.asarray(ratings_BK).tolist() == [[float(a), float(b)] for a in judge.RATINGS
                                               for b in judge.RATINGS]


# ---- ratings ----

@pytest.mark.parametrize("reply, stop, want", [
    ("7\nRating B: 4", True, (7.0, 4.0)),
    ("10\nRating B: 10", True, (10.0, 10.0)),
    ("1\nRating B: 10", True, (1.0, 10.0)),
    ("10\nRating B: 1", True, (10.0, 1.0)),
    ("7\nRating B: 4", False, None),  # cut before its stop token
    ("7\nRating B: 4\n", True, None),  # anything after the rating
    ("11\nRating B: 4", True, None),
    ("0\nRating B: 4", True, None),
    ("7\nRating A: 4", True, None),
    ("7 Rating B: 4", True, None),
    ("x!", True, None),
    ("", True, None),
])
def test_parse_pair_ratings_from_tokens(reply, stop, want):
    tokens_BN, lengths_B = padded([reply], 20, eos=[[EOS] if stop else []])
    ratings_BK, parsed_B = pairrl.parse_ratings(PAIR, tokens_BN, lengths_B, jnp.asarray([stop]))
    assert bool(parsed_B[0]) == (want is not None)
    assert tuple(np.asarray(ratings_BK[0]).tolist()) == (want or (0.0, 0.0))


@pytest.mark.parametrize("reply, want", [("10", 10.0), ("3", 3.0), ("1", 1.0), ("0", None),
                                         ("3\n", None), ("a", None)])
def test_parse_point_ratings_from_tokens(reply, want):
    tokens_BN, lengths_B = padded([reply], 20, eos=[[EOS]])
    ratings_BK, parsed_B = pairrl.parse_ratings(POINT, tokens_BN, lengths_B, jnp.asarray([True]))
    assert bool(parsed_B[0]) == (want is not None)
    assert float(ratings_BK[0, 0]) == (want or 0.0)


def test_every_reply_that_parses_reads_the_same_in_v1_infer():
    for reply, ratings in zip(PAIR.replies, PAIR.ratings):
        assert judge.parse_pair_ratings("Rating A: " + TOK.decode(reply)) == ratings
    for reply, ratings in zip(POINT.replies, POINT.ratings):
        assert judge.parse_point_rating("Rating: " + TOK.decode(reply)) == ratings[0]


# ---- rewards ----

def test_verifier_rewards_against_hand_worked_values():
    # (ratings, verdicts) -> 1/2 * sum of 1(|v - y| <= 0.2) (1 - |v - y|), v = (r - 1) / 9.
    cases = [((10, 1), (1, 0), 1.0),
             ((9, 2), (1, 0), 8 / 9),  # |v - y| = 1/9 on both
             ((10, 5), (1, 0), 0.5),  # v = 4/9 for the incorrect one: outside the band
             ((2, 10), (1, 0), 0.0),
             ((10, 9), (1, 1), (1 + 8 / 9) / 2),
             ((8, 10), (1, 1), 0.5),  # 8 gives |v - y| = 2/9 > 0.2
             ((3, 3), (0, 0), 0.0)]
    ratings_BK = jnp.asarray([c[0] for c in cases], jnp.float32)
    verdicts_BK = jnp.asarray([c[1] for c in cases], bool)
    got = pairrl.verifier_rewards(ratings_BK, verdicts_BK, jnp.ones(len(cases), bool))
    # float32: (r - 1) / 9, |. - y| and 1 - . each round once (<= 6e-8 each near 1).
    np.testing.assert_allclose(got, [c[2] for c in cases], rtol=0, atol=3e-7)
    unparsed = pairrl.verifier_rewards(ratings_BK, verdicts_BK, jnp.zeros(len(cases), bool))
    assert (np.asarray(unparsed) == 0).all()
    # Pointwise: the one term, no 1/2.
    point = pairrl.verifier_rewards(jnp.asarray([[9.0], [1.0], [3.0]]),
                                    jnp.asarray([[True], [False], [False]]), jnp.ones(3, bool))
    np.testing.assert_allclose(point, [8 / 9, 1.0, 0.0], rtol=0, atol=3e-7)


def test_verifier_advantages_centre_on_the_valid_batch_mean():
    adv = pairrl.verifier_advantages(jnp.asarray([1.0, 0.0, 0.5, 7.0]),
                                     jnp.asarray([True, True, True, False]))
    assert np.asarray(adv).tolist() == [0.5, -0.5, 0.0, 0.0]


def test_judge_metrics_on_hand_worked_rows():
    # Rows: a CI pair judged right, a CI pair judged wrong (B correct, A rated higher), a
    # CC tie, an unparsed CI row, and an invalid row (ignored).
    ratings_BK = jnp.asarray([[9, 2], [8, 3], [10, 10], [0, 0], [1, 10]], jnp.float32)
    verdicts_BK = jnp.asarray([[1, 0], [0, 1], [1, 1], [1, 0], [1, 0]], bool)
    parsed_B = jnp.asarray([True, True, True, False, True])
    valid_B = jnp.asarray([True, True, True, True, False])
    m = pairrl.judge_metrics(ratings_BK, verdicts_BK, parsed_B, valid_B, jnp.zeros(5),
                             jnp.asarray([3, 4, 5, 6, 7]))
    third = np.float32(1) / np.float32(3)  # float32 division rounds once, as the metric's
    assert m["verifier/accuracy_ci"] == third
    assert m["verifier/tie_rate"] == third
    assert float(m["verifier/first_win_rate"]) == 1.0
    assert float(m["verifier/parse_rate"]) == 3 / 4
    assert int(m["verifier/generated_tokens"]) == 18


# ---- the step ----

MODEL = Decoder(preset("tiny", vocab_size=TOK.vocab_size, dtype="float32",
                       param_dtype="float32"))
P, G, N = 2, 4, 4


class EvenFirstToken:
    """A JAX reward: 1 when the first completion token's id is even (about half the rows
    of a random model, so groups hold correct and incorrect solutions)."""
    is_host = False

    def __call__(self, tokens_BN, lengths_B, finished_B, targets_B):
        r = (tokens_BN[:, 0] % 2 == 0).astype(jnp.float32)
        return r, {"accuracy": r.mean()}


def new_state(seed=0):
    tx = state_lib.make_optimizer(state_lib.OptimConfig(warmup_steps=0, weight_decay=0.0,
                                                        b1=0.9, b2=0.99, grad_clip=1.0),
                                  optax.constant_schedule(3e-2))
    return state_lib.create(init_params(MODEL.cfg, jax.random.key(seed)), tx, seed,
                            with_reference=False)


def batch():
    prompts_PL, plen_P = padded(["sort:5,3\n", "sort:1,2,0\n"], 12)
    return prompts_PL, plen_P, jnp.zeros((P, 1), jnp.int32), jnp.arange(P, dtype=jnp.int32)


@functools.cache  # tests that ask for the same step share its compiled programs
def step_of(verifier="none", lam=1.0, split=False, rollout=None):
    rl = rl_config(num_prompts=P, num_generations=G, num_minibatches=2, split_phases=split)
    kw = dict(max_new_tokens=N, stop_tokens=TOK.eos_ids, pad_id=PAD)
    rollout = rollout or rollout_config(speculative=False)
    if verifier == "none":
        return grpo.make_step(MODEL, rl, rollout, EvenFirstToken(), **kw)
    cfg = pairrl.PairRLConfig(verifier=verifier, lam=lam, pair_slots=4,
                              mixed_pairs_first=False, judge_generations=4,
                              judge_max_new_tokens=16)
    return pairrl.make_step(MODEL, rl, rollout, EvenFirstToken(), cfg, TOK, prompt_len=12, **kw)


# ---- the judge-format warm-up ----

def test_format_batch_shows_reference_or_one_digit_wrong_answers_and_uninformed_ratings():
    """`format_batch`: judge prompts V1-Infer writes, each shown solution the reference or
    the reference with exactly one answer digit changed (then wrong), replies that parse,
    and ratings uniform on 1..10 whatever the solution's correctness."""
    task = TaskConfig(name="sort", difficulty=1, max_steps=0, train_pool=0).make()
    counts = {True: np.zeros(11), False: np.zeros(11)}
    for step in range(40):
        prompts_PL, lengths_P, replies_PN, reply_lengths_P = pairrl.format_batch(task, 0, step, 50)
        assert prompts_PL.shape == (50, PAIR.prompt_len(*batches.budgets(task)))
        assert replies_PN.shape == (50, PAIR.longest_reply + 1)
        for row, prob in enumerate(batches.train_problems(task, 0, step, 50)):
            prompt = TOK.decode(prompts_PL[row, :lengths_P[row]].tolist())
            reply = replies_PN[row, :reply_lengths_P[row]].tolist()
            assert reply[-1] == EOS
            reply = TOK.decode(reply[:-1])
            head = f"Problem:\n{prob.prompt}\n\n"
            assert prompt.startswith(head)
            if row % 2 == 0:
                a = prompt[len(head) + len("Solution A:\n"):prompt.index("\n\nSolution B:")]
                b = prompt[prompt.index("Solution B:\n") + 12:prompt.index("\n\nRate")]
                assert prompt == judge.pair_prompt(prob.prompt, a, b)
                shown, ratings = [a, b], judge.parse_pair_ratings("Rating A: " + reply)
            else:
                sol = prompt[len(head) + len("Solution:\n"):prompt.index("\n\nRate")]
                assert prompt == judge.point_prompt(prob.prompt, sol)
                shown, ratings = [sol], (judge.parse_point_rating("Rating: " + reply),)
            for text, rating in zip(shown, ratings):
                assert rating in judge.RATINGS
                changed = [i for i, (x, y) in enumerate(zip(text, prob.solution)) if x != y]
                assert len(text) == len(prob.solution) and len(changed) <= 1
                if changed:  # a digit of the answer line, now a wrong answer
                    assert changed[0] > prob.solution.rindex("#") and text[changed[0]].isdigit()
                    assert not task.check(prob, text)
                counts[not changed][int(rating)] += 1
    # Uniform and uninformed: each rating's count, in either group of ~1500 ratings, within
    # 6 binomial sigmas of n/10 (p = 0.1; a false failure has probability < 1e-8 per cell).
    for group in counts.values():
        n = group.sum()
        assert n > 1000
        sigma = np.sqrt(n * 0.1 * 0.9)
        assert np.all(np.abs(group[1:] - n / 10) < 6 * sigma), group


def test_judge_format_steps_are_every_kth_sft_step():
    cfg = SFTConfig(steps=10, batch_size=4, learning_rate=1e-3, judge_every=4)
    assert [s for s in range(10) if cfg.is_judge_step(s)] == [3, 7]
    off = SFTConfig(steps=10, batch_size=4, learning_rate=1e-3, judge_every=0)
    assert not any(off.is_judge_step(s) for s in range(10))


def test_das_for_generator_and_judge_rollouts_changes_no_training_bit():
    """`rollout.speculative` drafts the judge rollouts too (`das.rollout_new_prompts`): the
    same tokens as plain decoding, so the same PairRL step, bit for bit (the sampler's own
    log-probs aside: tests/rl/test_grpo.py says why), with the judge rows' drafts counted."""
    # One bucket (no compaction): compaction's identity is tests/rollout/test_speculative.py's.
    spec = rollout_config(speculative=True, widths=(0, 4), compaction=False,
                          verify_impl="reference", fit_cost_model=False)
    plain_step, spec_step = step_of("pairwise"), step_of("pairwise", rollout=spec)
    s1, s2 = new_state(), new_state().replace(history=das.init_history(spec, P, G, N))
    s1, m1 = plain_step(s1, *batch())
    s2, m2 = spec_step(s2, *batch())
    assert float(m1["verifier/valid_frac"]) > 0
    for k in m1:
        if not k.startswith("time/") and not k.endswith("sampler_trainer_logprob_gap"):
            np.testing.assert_array_equal(m1[k], m2[k], err_msg=k)
    assert int(m2["verifier/spec/drafted"]) > 0
    assert int(m2["verifier/spec/passes"]) <= int(m2["verifier/spec/plain_passes"])
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)


def test_lambda_zero_is_standard_rl_bit_for_bit():
    grpo_step, pair_step = step_of(), step_of("pairwise", lam=0.0)
    s1, s2 = new_state(), new_state()
    for _ in range(2):
        s1, m1 = grpo_step(s1, *batch())
        s2, m2 = pair_step(s2, *batch())
        assert float(m2["verifier/valid_frac"]) > 0  # judge rows were built and decoded
        for k in m1:
            np.testing.assert_array_equal(m1[k], m2[k], err_msg=k)
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)
    jax.tree.map(np.testing.assert_array_equal, s1.opt_state, s2.opt_state)


def test_judge_rows_enter_the_update_weighted_by_lambda():
    """With advantages that are not 0, judge rows weighted 0 leave the update as without
    them, and weighted 1 change it."""
    rl = rl_config(num_prompts=P, num_generations=G, num_minibatches=2)
    prompts_PL, plen_P, _, ids_P = batch()
    tokens_BN, lengths_B = padded(["#5", "#35", "x", "#"] * 2, N, eos=[[EOS]] * 8)
    gen = Rollout(tokens_BN, lengths_B, jnp.zeros((8, N)), jnp.zeros((8, N)), jnp.ones(8, bool))
    rewards_B = jnp.asarray([1.0, 0, 0, 1, 0, 1, 1, 1])
    replies_JN, reply_len_J = padded(["7\nRating B: 4", "1"] * 2, 16, eos=[[EOS]] * 4)
    judge_rows = grpo.ExtraRows(
        prompts_PL[jnp.asarray([0, 0, 1, 1])], plen_P[jnp.asarray([0, 0, 1, 1])],
        Rollout(replies_JN, reply_len_J, jnp.zeros((4, 16)), jnp.zeros((4, 16)),
                jnp.ones(4, bool)),
        jnp.asarray([1.0, -1.0, 0.5, -0.5]),
        (jnp.arange(16)[None] < reply_len_J[:, None]).astype(jnp.float32))

    # One program for both weights (the weight an argument): two compiles, not three.
    update = jax.jit(lambda s, e, coef: grpo.update_phase(MODEL, rl, s, prompts_PL, plen_P,
                                                          ids_P, gen, rewards_B, e,
                                                          extra_coef=coef))

    def params_after(extra, coef):
        return jax.tree.leaves(update(new_state(), extra, jnp.float32(coef))[0].params)

    alone, zero, one = (params_after(None, 0.0), params_after(judge_rows, 0.0),
                        params_after(judge_rows, 1.0))
    jax.tree.map(np.testing.assert_array_equal, alone, zero)
    assert any(not np.array_equal(a, b) for a, b in zip(alone, one))


@pytest.mark.parametrize("verifier", ["pairwise", "pointwise"])
def test_a_pairrl_step_runs_and_reports_its_metrics(verifier):
    state, m = step_of(verifier, split=True)(new_state(), *batch())
    assert int(state.step) == 1
    want = {"reward", "accuracy", "verifier/reward", "verifier/parse_rate",
            "verifier/generated_tokens", "verifier/prompt_tokens", "verifier/loss",
            "time/rollout_s", "time/judge_s", "time/update_s"}
    want |= ({"verifier/accuracy_ci", "verifier/tie_rate", "verifier/first_win_rate"}
             if verifier == "pairwise" else {"verifier/accuracy"})
    assert want <= set(m), want - set(m)
    assert all(np.isfinite(np.asarray(m[k])).all() for k in want)
    # 2 prompts x 4 judge rows, each prompt at most 16 new tokens; slots with no correct
    # solution are not counted.
    assert 0 < int(m["verifier/generated_tokens"]) <= 8 * 16


# ---- the job ----

def tiny_pairrl_config(rl_steps):
    c = config_dict("pairrl", f"task=sort,model=tiny,sft_steps=0,rl_steps={rl_steps}")
    c.task.max_steps = 1
    c.rl.num_prompts = 2
    c.eval.num_problems = 4
    c.eval.every = 100
    c.checkpoint.every = 1
    return c


def test_pairrl_job_resumed_equals_uninterrupted(tmp_path):
    from test_train import final_params, run, step_rows

    config = tiny_pairrl_config(rl_steps=2)
    assert train_config(config).pairrl.verifier == "pairwise"
    run(config, tmp_path / "a")
    run(tiny_pairrl_config(rl_steps=1), tmp_path / "b")
    run(config, tmp_path / "b")
    rows_a, rows_b = step_rows(tmp_path / "a"), step_rows(tmp_path / "b")
    assert [r["step"] for r in rows_a] == [1, 2] and "verifier/reward" in rows_a[0]
    assert rows_a == rows_b
    (step_a, params_a), (step_b, params_b) = (final_params(config, tmp_path / d) for d in "ab")
    assert step_a == step_b == 2
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_the_switch_builds_standard_rl_or_pairrl():
    assert train_config(config_dict("grpo")).pairrl.verifier == "none"
    for verifier in pairrl.VERIFIERS:
        c = train_config(config_dict("pairrl", f"verifier={verifier},lam=0.5"))
        assert (c.pairrl.verifier, c.pairrl.lam, c.rl.num_generations) == (verifier, 0.5, 4)
    bad = config_dict("pairrl")
    bad.pairrl.judge_generations = 6
    with pytest.raises(ValueError, match="judge_generations=6 must be a multiple of "
                                         "config.pairrl.pair_slots=4"):
        train_config(bad)


def test_pairrl_step_on_a_mesh_equals_one_device():
    """PairRL's step, judge phase included, with the state split over a (data 2, fsdp 2,
    tensor 2) mesh of CPU devices and the batch over its batch axes: the same sampled tokens
    as on one device (every integer metric equal) and float metrics and params within
    float32 reordering, bounded as in tests/rl/test_sharded.py (rtol 1e-4 per metric; a
    param moves at most its learning rate per Adam step, so two orders differ by at most 2 x
    the steps' learning rates)."""
    from configs import layout as make_layout
    from jaxrl import sharding
    from jaxrl.models.decoder import param_axes

    lay = make_layout({"data": 2, "fsdp": 2, "tensor": 2})
    one_step = step_of("pairwise")
    s1, s8 = new_state(), new_state()
    where = state_lib.shardings(s8, param_axes(MODEL.cfg), lay)
    rl = rl_config(num_prompts=P, num_generations=G, num_minibatches=2)
    cfg = pairrl.PairRLConfig(verifier="pairwise", lam=1.0, pair_slots=4,
                              mixed_pairs_first=False, judge_generations=4,
                              judge_max_new_tokens=16)
    mesh_step = pairrl.make_step(MODEL, rl, rollout_config(speculative=False), EvenFirstToken(),
                                 cfg, TOK, prompt_len=12, max_new_tokens=N,
                                 stop_tokens=TOK.eos_ids, pad_id=PAD, layout=lay,
                                 state_sharding=where)
    s8 = sharding.place(s8, where)
    s1, m1 = one_step(s1, *batch())
    s8, m8 = mesh_step(s8, *sharding.shard_batch(batch(), lay))
    assert float(m1["verifier/valid_frac"]) > 0 and int(m1["verifier/generated_tokens"]) > 0
    for k, v in m1.items():
        if k.startswith("time/"):
            continue
        if np.issubdtype(np.asarray(v).dtype, np.integer):
            assert int(m8[k]) == int(v), k
        else:
            assert float(m8[k]) == pytest.approx(float(v), rel=1e-4, abs=1e-6), k
    assert s8.params["layers_0"]["attn"]["q_proj"]["kernel"].sharding.spec == \
        where.params["layers_0"]["attn"]["q_proj"]["kernel"].spec
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=2 * 2 * 3e-2),
                 jax.device_get(s1.params), jax.device_get(s8.params))
