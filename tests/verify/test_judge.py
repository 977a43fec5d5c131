"""Judge prompts, rating parsing, logits-mode expectations by hand, and the model-backed judge
end to end on a tiny random model (pipeline only: a random model cannot judge)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs

from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.tokenizer import CharTokenizer
from jaxrl.verify import baselines, judge, tournament

TOK = CharTokenizer()


@pytest.mark.parametrize("text, want", [
    ("Rating A: 7\nRating B: 4", (7.0, 4.0)),
    ("Rating A: 8/10\nRating B: 3/10 because B forgets the carry.", (8.0, 3.0)),
    ("Rating A: 7. Solution B = 9, it is right.", (7.0, 9.0)),
    ("Rating A: 7.5\n\nrating b: 2", (7.5, 2.0)),
    ("Rating A: A gets 8/10 and B gets 6/10.", (8.0, 6.0)),
    ("Rating A: 12\nRating B: 3", None),  # out of range
    ("Rating A: 0\nRating B: 3", None),
    ("Rating A: I think both are fine.", None),  # missing
    ("Rating A: 6\nThe end.", None),  # B missing
])
def test_parse_pair_ratings(text, want):
    assert judge.parse_pair_ratings(text) == want


def test_parse_last_ratings_after_reasoning():
    reply = ("A adds 2 and 3 to get 5. Rating A: 9 would fit if B were wrong, and\n"
             "B gets 6.\nRating A: 9\nRating B: 2")
    assert judge.parse_pair_ratings(reply, last=True) == (9.0, 2.0)
    assert judge.parse_pair_ratings("draft 7/10 and 5/10; final 8/10 and 2/10", last=True) == \
        (8.0, 2.0)
    assert judge.parse_point_rating("Rating: 4 at first. Rating: 8", last=True) == 8.0
    assert judge.parse_point_rating("Rating: 4 at first. Rating: 8") == 4.0


@pytest.mark.parametrize("text, want", [
    ("Rating: 9", 9.0), ("Rating: 10/10\nLooks right.", 10.0), ("Rating: 0", None),
    ("Rating: The solution deserves 6/10.", 6.0), ("Rating: ", None), ("Rating: 3.5 ok", 3.5),
])
def test_parse_point_rating(text, want):
    assert judge.parse_point_rating(text) == want


def test_prompts_fit_the_char_alphabet_and_end_at_the_slot():
    for text in (judge.pair_prompt("What is 12+7?", "12+7=19", "12+7=18"),
                 judge.pair_prompt("p", "a", "b", slot="B"), judge.point_prompt("p", "s")):
        TOK.encode(text)  # raises on a character outside the alphabet
    assert judge.pair_prompt("p", "first", "second").endswith("Rating A: ")
    assert judge.pair_prompt("p", "first", "second", "B").endswith("Rating B: ")
    assert judge.pair_prompt("p", "first", "second").index("first") < \
        judge.pair_prompt("p", "first", "second").index("second")
    assert judge.pair_prompt("p", "a", "b", None).endswith(judge.REASON_FIRST)
    assert judge.point_prompt("p", "s", reason=True).endswith(judge.REASON_FIRST)
    with pytest.raises(ValueError, match="slot='C'"):
        judge.pair_prompt("p", "a", "b", slot="C")


def _logp(probs: dict[int, float], vocab: int, digits: list[int]) -> np.ndarray:
    """Log-probs with the given token probabilities, the rest spread over non-digit tokens
    (so no rating gets mass that the hand computation leaves out)."""
    others = [t for t in range(vocab) if t not in probs and t not in digits]
    p = np.zeros(vocab)
    p[others] = (1.0 - sum(probs.values())) / len(others)
    for t, v in probs.items():
        p[t] = v
    with np.errstate(divide="ignore"):
        return np.log(p)[None, :]


def test_expected_rating_char_tokenizer_by_hand():
    # CharTokenizer spells "10" as "1", "0": rating 10 needs the step after "1".
    tokens = judge.RatingTokens.from_tokenizer(TOK)
    one, zero = TOK.encode("1")[0], TOK.encode("0")[0]
    assert tokens.second_R.tolist() == [-1] * 9 + [zero] and tokens.continued_token == one
    seven, nine = TOK.encode("7")[0], TOK.encode("9")[0]
    digits = TOK.encode("0123456789")
    first = _logp({one: 0.2, seven: 0.3, nine: 0.1}, TOK.vocab_size, digits)  # 0.4 elsewhere
    second = _logp({zero: 0.25}, TOK.vocab_size, digits)
    # Masses: r=1: 0.2 * 0.75 = 0.15, r=10: 0.2 * 0.25 = 0.05, r=7: 0.3, r=9: 0.1; sum 0.6.
    # E = (0.15 + 0.5 + 2.1 + 0.9) / 0.6 = 3.65 / 0.6 = 73/12. exp(log p) and a 10-term
    # sum: relative error a few ulp; 1e-12 is far above that and far below any real slip.
    got = judge.expected_rating(first, second, tokens)
    np.testing.assert_allclose(got, [73 / 12], rtol=1e-12)


class WholeTenTokenizer:
    """A tokenizer that spells "10" as one token (as Llama-3's BPE does): id 1 is "10", id
    2 + k is character k of a small alphabet."""

    CHARS = " :ABRatingn\n0123456789"
    vocab_size, pad_id, eos_ids = 2 + len(CHARS), 0, (0,)

    def encode(self, text):
        return [1 if piece == "10" else 2 + self.CHARS.index(piece)
                for piece in re.findall(r"10|.", text, re.DOTALL)]

    def decode(self, ids):
        return "".join("10" if i == 1 else self.CHARS[i - 2] for i in ids if i)


def test_expected_rating_one_token_ten_by_hand():
    tok = WholeTenTokenizer()
    tokens = judge.RatingTokens.from_tokenizer(tok)
    assert (tokens.second_R == -1).all() and tokens.first_R[9] == 1
    one, ten = tok.encode("1")[0], 1
    digits = tok.encode("0123456789") + [ten]
    first = _logp({one: 0.5, ten: 0.25}, tok.vocab_size, digits)
    second = _logp({tok.encode("0")[0]: 0.9}, tok.vocab_size, digits)  # unused: nothing continues
    # E = (0.5 * 1 + 0.25 * 10) / 0.75 = 3 / 0.75 = 4.
    np.testing.assert_allclose(judge.expected_rating(first, second, tokens), [4.0], rtol=1e-12)


def test_rating_tokens_reject_an_unstable_prefix():
    class Merging(WholeTenTokenizer):  # ": 7" merges into one token
        def encode(self, text):
            return [99 if p.startswith(": ") else 2 + self.CHARS.index(p)
                    for p in re.findall(r": \d|.", text, re.DOTALL)]
    with pytest.raises(ValueError, match="rating 1 after"):
        judge.RatingTokens.from_tokenizer(Merging())


P, N = 2, 4
PROBLEMS = ["What is 2+3?", "Sort: 3 1 2"]
CANDIDATES = [["5", "6", "2+3=5", "4"], ["1 2 3", "3 2 1", "1 3 2", "123"]]


@pytest.fixture(scope="module")
def tiny():
    cfg = preset("tiny", vocab_size=CharTokenizer.vocab_size, dtype="float32",
                 param_dtype="float32")
    return Decoder(cfg), init_params(cfg, jax.random.key(0))


def _judge(tiny, mode, seed=0):
    model, params = tiny
    return judge.ModelJudge(model, params, TOK, PROBLEMS, CANDIDATES, mode=mode, seed=seed,
                            max_new_tokens=8)


def test_model_judge_generate_end_to_end(tiny):
    j = _judge(tiny, "generate")
    res = tournament.swiss(j, P, N, 5, 0)  # rounds of 2, 2, 1 calls per problem
    assert res.calls_P.tolist() == [5, 5] and j.stats.calls == 10
    for pairs, ratings in zip(res.rounds, res.ratings):
        assert ratings.shape == pairs.shape == (P, N // 2, 2)
        used = pairs >= 0
        assert ((ratings[used] >= 1) & (ratings[used] <= 10)).all()
        assert np.isnan(ratings[~used]).all()
    prompts = [judge.pair_prompt(PROBLEMS[p], CANDIDATES[p][a], CANDIDATES[p][b])
               for r in res.rounds for p, row in enumerate(r) for a, b in row if a >= 0]
    # Either order shows the same characters, so the prompt tokens are known exactly.
    assert j.stats.prompt_tokens == sum(len(TOK.encode(t)) for t in prompts)
    assert 0 < j.stats.generated_tokens <= 10 * 8
    assert j.stats.unparseable <= 10 and j.stats.first_shown_wins <= j.stats.decisive <= 10
    # Same seed, same calls: same ratings (position-keyed sampling, seeded debiasing).
    again = tournament.swiss(_judge(tiny, "generate"), P, N, 5, 0)
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(res.ratings, again.ratings))


def test_model_judge_logits_matches_a_full_forward_pass(tiny):
    model, params = tiny
    j = _judge(tiny, "logits", seed=3)
    pairs_PR2 = np.array([[[0, 2], [1, 3]], [[2, 1], [-1, -1]]])
    ratings = j(pairs_PR2)
    assert j.stats.calls == 3 and j.stats.unparseable == 0 and j.stats.generated_tokens == 0
    assert np.isnan(ratings[1, 1]).all()
    # Reference: no KV cache, the whole prompt (plus "1" for the second step) in one pass.
    # Which solution was shown first is not returned, so accept the rating of either order.
    tokens = judge.RatingTokens.from_tokenizer(TOK)
    one = tokens.continued_token
    texts = []
    for p, r in [(0, 0), (0, 1), (1, 0)]:
        x, y = (CANDIDATES[p][i] for i in pairs_PR2[p, r])
        texts += [judge.pair_prompt(PROBLEMS[p], *shown, s)
                  for shown in [(x, y), (y, x)] for s in "AB"]
    rows = [TOK.encode(t) + [one] for t in texts]
    width = max(map(len, rows))
    ids_BT = np.asarray([r + [0] * (width - len(r)) for r in rows])
    mask_BT = np.arange(width)[None, :] < np.asarray([len(r) for r in rows])[:, None]
    logits_BTV = jax.jit(model.apply)({"params": params}, jnp.asarray(ids_BT),
                                      attention_mask_BT=jnp.asarray(mask_BT))
    logp_BTV = np.asarray(jax.nn.log_softmax(logits_BTV))
    want = np.asarray([judge.expected_rating(logp_BTV[i, len(r) - 2][None],
                                             logp_BTV[i, len(r) - 1][None], tokens)[0]
                       for i, r in enumerate(rows)]).reshape(3, 2, 2)  # [call, order, slot]
    for c, (p, r) in enumerate([(0, 0), (0, 1), (1, 0)]):
        as_shown, swapped = want[c, 0], want[c, 1][::-1]
        # float32 logits through two different attention paths (cached vs full): agreement
        # to ~1e-6 relative in the log-probs; 1e-4 on a 1-10 rating is far above that.
        assert min(np.abs(ratings[p, r] - as_shown).max(),
                   np.abs(ratings[p, r] - swapped).max()) < 1e-4


def test_model_judge_pointwise(tiny):
    j = _judge(tiny, "logits")
    c = baselines.pointwise(j.pointwise, P, N, N, 0)
    assert c.calls_P.tolist() == [N, N] and j.stats.calls == P * N
    prompts = [judge.point_prompt(PROBLEMS[p], s) for p in range(P) for s in CANDIDATES[p]]
    assert j.stats.prompt_tokens == sum(len(TOK.encode(t)) for t in prompts)


def test_model_judge_bad_arguments(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="mode='sample'"):
        judge.ModelJudge(model, params, TOK, PROBLEMS, CANDIDATES, mode="sample")
    with pytest.raises(ValueError, match="reason=True needs mode='generate'"):
        judge.ModelJudge(model, params, TOK, PROBLEMS, CANDIDATES, mode="logits", reason=True)
    with pytest.raises(ValueError, match="2 problems but 1 candidate lists"):
        judge.ModelJudge(model, params, TOK, PROBLEMS, CANDIDATES[:1])
    with pytest.raises(ValueError, match="pairs_PR2 has 3 rows; this judge holds 2 problems"):
        _judge(tiny, "logits")(np.zeros((3, 2, 2), np.int64))


def test_model_judge_on_a_mesh_matches_one_device(tiny):
    """Batches split over 8 (fake CPU) devices rate as the unsharded judge does."""
    from jaxrl import sharding
    from jaxrl.models.decoder import param_axes

    model, params = tiny
    layout = configs.layout()
    placed = sharding.shard_params(params, param_axes(model.cfg), layout)
    pairs_PR2 = np.array([[[0, 2], [1, 3]], [[2, 1], [-1, -1]]])
    one = _judge(tiny, "logits", seed=3)(pairs_PR2)
    on_mesh = judge.ModelJudge(model, placed, TOK, PROBLEMS, CANDIDATES, mode="logits", seed=3,
                               max_new_tokens=8, layout=layout)
    # Same seed: the same shown orders. The same float32 math per row, split differently
    # over devices: 1e-4 on a 1-10 rating is far above any reassociation (~1e-6 relative).
    np.testing.assert_allclose(on_mesh(pairs_PR2), one, atol=1e-4)
    assert on_mesh.stats.calls == 3
    with pytest.raises(ValueError, match="row_multiple=4 = 4 rows does not split over the batch"):
        judge.ModelJudge(model, placed, TOK, PROBLEMS, CANDIDATES, row_multiple=4, layout=layout)
