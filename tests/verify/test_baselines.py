"""Baselines on hand-built cases, and the synthetic judges against their stated noise."""
import numpy as np
import pytest

from jaxrl.verify import baselines, metrics, synthetic


def fixed_point_judge(ratings_PN):
    ratings_PN = np.asarray(ratings_PN, np.float64)
    rows = lambda c: np.arange(len(c))[:, None]  # noqa: E731
    return lambda cands_PR: np.where(cands_PR >= 0,
                                     ratings_PN[rows(cands_PR), np.maximum(cands_PR, 0)], np.nan)


def quality_pair_judge(quality_PN):
    """A noiseless pairwise judge: the better candidate gets 10, the other 1."""
    q = np.asarray(quality_PN, np.float64)

    def judge(pairs_PR2):
        rows = np.arange(len(pairs_PR2))[:, None]
        a, b = np.maximum(pairs_PR2[..., 0], 0), np.maximum(pairs_PR2[..., 1], 0)
        a_wins = q[rows, a] > q[rows, b]
        return np.stack([np.where(a_wins, 10.0, 1.0), np.where(a_wins, 1.0, 10.0)], -1)
    return judge


def test_pointwise_breaks_ties_at_random_and_reports_them():
    judge = fixed_point_judge([[9, 10, 10, 3], [1, 2, 3, 4]])
    picks = set()
    for seed in range(20):
        c = baselines.pointwise(judge, 2, 4, 4, seed)
        assert c.chosen_P[1] == 3 and c.top_count_P.tolist() == [2, 1]
        assert c.calls_P.tolist() == [4, 4]
        picks.add(int(c.chosen_P[0]))
    assert picks == {1, 2}
    assert metrics.tie_rate(c.top_count_P) == 0.5
    assert baselines.pointwise(judge, 2, 4, 9, 0).calls_P.tolist() == [8, 8]  # 2 per candidate


def test_knockout_with_a_perfect_judge_finds_the_best():
    rng = np.random.default_rng(0)
    for n in (2, 5, 8, 13):
        q = rng.random((30, n))
        for budget, k in [(n - 1, 1), (3 * n, 3 * n // (n - 1))]:
            c = baselines.knockout(quality_pair_judge(q), 30, n, budget, 1)
            assert (c.chosen_P == q.argmax(-1)).all()
            assert (c.calls_P == (n - 1) * k).all() and (c.calls_P <= budget).all()


def test_random_pairing_spends_its_budget():
    q = np.random.default_rng(0).random((20, 6))
    res = baselines.random_pairing(quality_pair_judge(q), 20, 6, 14, 0)
    assert (res.calls_P == 14).all() and len(res.rounds) == 5  # 3 + 3 + 3 + 3 + 2


def test_majority_vote():
    answers = [["1", "2", "2", None], [None, None, None, None], ["a", "b", "b", "a"]]
    picks = {0: set(), 2: set()}
    for seed in range(30):
        c = baselines.majority_vote(answers, seed)
        assert c.chosen_P[0] in (1, 2) and c.calls_P.tolist() == [0, 0, 0]
        assert c.top_count_P.tolist() == [1, 0, 2]  # answers tied at the top
        picks[2].add(answers[2][c.chosen_P[2]])
    assert picks[2] == {"a", "b"}


def test_best_of_majority_rates_only_frequent_answers():
    answers = [["x", "x", "y", "z"], ["u", "v", "w", "t"]]
    ratings = [[3, 7, 9, 10], [2, 8, 5, 1]]
    c = baselines.best_of_majority(fixed_point_judge(ratings), answers, 0, alpha=0.5)
    # Problem 0: only "x" (2 of 4) reaches 0.5; its best rating is candidate 1, though "z"
    # is rated 10. Problem 1: no answer reaches 0.5, so all four modes (1 each) stay.
    assert c.chosen_P.tolist() == [1, 1] and c.calls_P.tolist() == [2, 4]


def test_floor_and_ceiling():
    correct = np.array([[False, True, True], [False, False, False], [True, False, False]])
    assert metrics.pick_rate(correct, baselines.first_candidate(3).chosen_P)[0] == 1 / 3
    assert baselines.oracle(correct).chosen_P.tolist()[0::2] == [1, 0]
    assert metrics.pick_rate(correct, baselines.oracle(correct).chosen_P)[0] == 2 / 3


@pytest.mark.parametrize("call, match", [
    (lambda j: baselines.pointwise(j, 2, 4, 3, 0), "budget=3 is below N=4"),
    (lambda j: baselines.knockout(j, 2, 4, 2, 0), "budget=2 is below the N - 1 = 3 matches"),
    (lambda j: baselines.pointwise(lambda c: np.zeros(3), 2, 4, 4, 0), r"shape \(3,\)"),
    (lambda j: baselines.pointwise(lambda c: np.full(c.shape, 12.0), 2, 4, 4, 0), r"\[12.0"),
    (lambda j: baselines.best_of_majority(j, [["a"] * 4] * 2, 0, alpha=0.0), "alpha=0.0"),
    (lambda j: baselines.random_pairing(j, 2, 1, 4, 0), "num_candidates=1"),
])
def test_bad_inputs_name_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call(fixed_point_judge(np.full((2, 4), 5.0)))


@pytest.mark.parametrize("error", [0.2, 0.35])
def test_pair_judge_has_its_stated_error_rate(error):
    # 40000 calls on random pairs: the measured error (a tie counting half) has standard
    # error below sqrt(0.25 / 40000) = 0.0025; assert within 4 of them.
    world = synthetic.sample_world(2000, 40, 0.3, np.random.default_rng(0))
    judge = synthetic.NoisyPairJudge(world.quality_PN, error, np.random.default_rng(1))
    pairs_PR2 = np.arange(40).reshape(1, 20, 2).repeat(2000, 0)
    r = judge(pairs_PR2)
    q = world.quality_PN.reshape(2000, 20, 2)
    better_first = q[..., 0] > q[..., 1]
    wrong = np.where(better_first, r[..., 0] < r[..., 1], r[..., 0] > r[..., 1])
    measured = (wrong + 0.5 * (r[..., 0] == r[..., 1])).mean()
    assert abs(measured - error) < 4 * 0.0025, measured
    assert ((r >= 1) & (r <= 10)).all()


def test_pointwise_judge_saturates():
    # The over-confident absolute scale: most of 16 candidates share the top rating.
    world = synthetic.sample_world(500, 16, 0.3, np.random.default_rng(0))
    judge = synthetic.NoisyPointJudge(world.quality_PN, 0.35, np.random.default_rng(1))
    c = baselines.pointwise(judge, 500, 16, 16, 0)
    assert metrics.tie_rate(c.top_count_P) > 0.9


def test_metrics_by_hand():
    correct = np.array([[True, False], [False, False], [False, True], [True, True]])
    q, se = metrics.pick_rate(correct, np.array([0, 1, 0, 1]))
    assert q == 0.5 and se == np.sqrt(0.25 / 4)  # 2 of 4 hits; both exact in binary
    assert metrics.total_calls(16, np.array([48, 47])) == 63.5
    assert metrics.first_shown_win_rate(3, 4) == 0.75
    assert np.isnan(metrics.first_shown_win_rate(0, 0))
    with pytest.raises(ValueError, match=r"chosen_P has shape \(3,\)"):
        metrics.pick_rate(correct, np.array([0, 1, 0]))
