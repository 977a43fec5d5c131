"""The method roster (jaxrl.verify.methods) with synthetic judges of known error: every
method at every budget, each within its budget, candidates as the docstring says."""
import numpy as np
import pytest

from jaxrl.verify import methods, metrics, synthetic


def roster(n=6, multipliers=(1, 3), p=200, error=0.2, seed=0):
    world = synthetic.sample_world(p, methods.widest(n, multipliers), 0.3,
                                   np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    out = methods.run_all(
        lambda m: synthetic.NoisyPairJudge(world.quality_PN[:, :m], error, rng),
        lambda m: synthetic.NoisyPointJudge(world.quality_PN[:, :m], error, rng),
        world.answers_PN.tolist(), world.correct_PN, n, multipliers, seed,
        d_min=2, window=8, tau=0.1, alpha=0.1)
    return world, out


def test_every_method_at_every_budget_within_it():
    n, mults = 6, (1, 3)
    world, out = roster(n, mults)
    assert methods.widest(n, mults) == 6 + 18
    got = {(o.method, o.multiplier) for o in out}
    assert got == ({(m, k) for m in methods.BY_BUDGET for k in mults}
                   | {(m, None) for m in methods.FIXED})
    by = {(o.method, o.multiplier): o for o in out}
    for k in mults:
        v = k * n
        for name in methods.BY_BUDGET[:4]:
            assert by[name, k].num_candidates == n and by[name, k].choice.calls_P.max() <= v
        matched = by["pointwise, total-matched N'=(N+V)/2", k]
        assert matched.num_candidates == (n + v) // 2
        assert (matched.choice.calls_P == (n + v) // 2).all()  # N' + N' = N + V in all
        assert by["majority, N+V samples", k].num_candidates == n + v
        assert (by[methods.SWISS, k].choice.calls_P == v).all()
    oracle = metrics.pick_rate(world.correct_PN[:, :n], by["oracle Pass@N", None].choice.chosen_P)
    assert oracle[0] == world.correct_PN[:, :n].any(-1).mean()  # a correct one when there is one
    for o in out:
        if o.num_candidates == n:
            pick = metrics.pick_rate(world.correct_PN[:, :n], o.choice.chosen_P)[0]
            assert pick <= oracle[0]


def test_swiss_beats_the_first_candidate_with_a_decent_judge():
    world, out = roster(n=8, multipliers=(2,), p=1000, error=0.15)
    pick = {o.method: metrics.pick_rate(world.correct_PN[:, :o.num_candidates],
                                        o.choice.chosen_P) for o in out}
    swiss, first = pick[methods.SWISS], pick["Pass@1 (first candidate)"]
    # Pass@1 is ~0.3 (the correct rate); at 1000 problems a standard error is <= 0.016, so a
    # gap of 0.2 is > 8 combined standard errors.
    assert swiss[0] - first[0] > 0.2


def test_roster_needs_enough_candidates():
    world = synthetic.sample_world(4, 10, 0.3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="correct_PM has 10 candidates per problem; the "
                                         "roster needs 16"):
        methods.run_all(None, None, world.answers_PN.tolist(), world.correct_PN, 4, (1, 3), 0,
                        d_min=2, window=8, tau=0.1, alpha=0.1)
