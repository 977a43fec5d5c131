"""The length-aware draft budget policy and the width cost model (jaxrl/rollout/policy.py),
on hand-worked cases."""
import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder
from jaxrl.rollout import policy, speculative
from jaxrl.rollout.policy import LONG, MEDIUM, SHORT
from configs import layout, rollout_config


def test_length_classes_by_rank_of_mean_past_length():
    # Mean past lengths (0 = empty slot): p0 10, p1 40, p2 no history, p3 25, p4 30, p5 5,
    # p6 30 (ties p4: the earlier prompt ranks first). Ranks among the 6 with history:
    # p1 0, p4 1, p6 2, p3 3, p0 4, p5 5 -> fractions 0, 1/6, 2/6, 3/6, 4/6, 5/6.
    lengths_PR = jnp.asarray([[10, 10], [50, 30], [0, 0], [25, 0], [30, 30], [5, 5], [20, 40]])
    got = np.asarray(policy.length_classes(lengths_PR, long_frac=0.2, medium_frac=0.4))
    # long: fraction < 0.2 -> p1, p4; medium: < 0.6 -> p6, p3; short: p0, p5; p2 medium.
    np.testing.assert_array_equal(got, [SHORT, LONG, MEDIUM, MEDIUM, LONG, SHORT, MEDIUM])


def test_length_classes_without_any_history_are_medium():
    got = policy.length_classes(jnp.zeros((3, 4), jnp.int32), 0.2, 0.4)
    np.testing.assert_array_equal(got, [MEDIUM] * 3)


@pytest.mark.parametrize("active,boost", [(64, 1), (33, 1), (32, 2), (31, 2), (16, 4), (9, 4),
                                          (8, 8), (1, 64), (0, 64)])
def test_tail_boost_is_the_power_of_two_below_batch_over_active(active, boost):
    assert int(policy.tail_boost(jnp.int32(active), 64)) == boost


def test_draft_budgets_scale_with_the_tail_and_cap_at_max_draft():
    class_B = jnp.asarray([SHORT, MEDIUM, LONG, LONG])
    budgets = (4, 8, 16)
    full = policy.draft_budgets(class_B, jnp.int32(64), 64, budgets, 16, True)
    np.testing.assert_array_equal(full, [4, 8, 16, 16])
    tail = policy.draft_budgets(class_B, jnp.int32(20), 64, budgets, 16, True)  # boost 2
    np.testing.assert_array_equal(tail, [8, 16, 16, 16])
    flat = policy.draft_budgets(class_B, jnp.int32(1), 64, budgets, 16, False)
    np.testing.assert_array_equal(flat, [8, 8, 8, 8])


def test_choose_width_maximises_expected_tokens_per_second():
    # Two live rows, one dead. Expected tokens (1 + running probabilities) for widths 0, 2, 4:
    # row 0 probs .9 .8 .5 .1 -> 1, 2.7, 3.3; row 1 probs .5 .2 0 0 -> 1, 1.7, 1.7.
    probs_BD = jnp.asarray([[.9, .8, .5, .1], [.5, .2, 0, 0], [1, 1, 1, 1]], jnp.float32)
    live_B = jnp.asarray([True, True, False])
    # Cost per pass over 3 rows: base + c * 3 * (k + 1).
    # base 1, c 0.1: 2/1.3=1.54, 4.4/1.9=2.32, 5.0/2.5=2.0 -> width 2.
    assert int(policy.choose_width(probs_BD, live_B, (0, 2, 4), 3, 1.0, 0.1)) == 1
    # base 10 (verification nearly free): 2/10.3, 4.4/10.9, 5.0/11.5=0.435 -> width 4.
    assert int(policy.choose_width(probs_BD, live_B, (0, 2, 4), 3, 10.0, 0.1)) == 2
    # base 0 (cost per token only): 2/0.3=6.67 beats 4.4/0.9 and 5/1.5 -> width 0.
    assert int(policy.choose_width(probs_BD, live_B, (0, 2, 4), 3, 0.0, 0.1)) == 0
    # base 1 again, the drafter's probabilities scaled by 0.2 (it forecast 5x what was
    # accepted): 1 + 0.2 * 1.7 + 1 + 0.2 * 0.7 = 2.48 over 1.9 = 1.31, 2.6 / 2.5 = 1.04, both
    # below plain's 2 / 1.3 = 1.54 -> width 0.
    assert int(policy.choose_width(probs_BD, live_B, (0, 2, 4), 3, 1.0, 0.1, 0.2)) == 0


def test_calibration_is_accepted_over_forecast_after_a_prior_and_at_most_1():
    # (3 + 4) / (10 + 4) = 0.5; a drafter that under-forecasts is not trusted above 1.
    assert float(policy.calibration(jnp.int32(3), jnp.float32(10.0), 4)) == 0.5
    assert float(policy.calibration(jnp.int32(0), jnp.float32(0.0), 4)) == 1.0
    assert float(policy.calibration(jnp.int32(9), jnp.float32(2.0), 4)) == 1.0


def test_free_width_only_when_the_widest_costs_within_the_slack():
    # base 1, c 0.001: 8 rows x 17 tokens cost 1.136 against 1.008 (+12.7%): not free at 10%,
    # free at 15%; 4 rows cost 1.068 against 1.004 (+6.4%): free.
    assert policy.free_width((0, 4, 8, 16), 8, 1.0, 0.001, 0.0) is None
    assert policy.free_width((0, 4, 8, 16), 8, 1.0, 0.001, 0.0, slack=0.15) == 3
    assert policy.free_width((0, 4, 8, 16), 4, 1.0, 0.001, 0.0) == 3
    assert policy.free_width((16, 0, 4), 4, 1.0, 0.001, 0.0) == 0  # index into widths as given
    assert policy.free_width((0, 4), 1, 0.0, 1.0, 0.0) is None  # no base cost: never free
    # 4 rows again, drafting costs 0.1: 1.168 against 1.004 (+16%): not free.
    assert policy.free_width((0, 4, 8, 16), 4, 1.0, 0.001, 0.1) is None


def test_fit_cost_model_recovers_a_line_and_clamps_at_zero():
    tokens = np.asarray([8, 40, 136, 512, 2560])
    c_base, c_tok = policy.fit_cost_model(tokens, 4e-4 + 9e-8 * tokens)
    assert c_base == pytest.approx(4e-4, rel=1e-9) and c_tok == pytest.approx(9e-8, rel=1e-9)
    c_base, c_tok = policy.fit_cost_model(tokens, -1e-4 + 1e-6 * tokens)  # negative intercept
    assert c_base == 0.0 and c_tok == pytest.approx(1e-6, rel=1e-6)


def test_drafting_can_pay_only_if_perfect_drafts_beat_plain_decoding():
    # 16 rows, 1 + 0.002 * tokens: plain 1 / 1.032 = 0.97 tokens/s per row; width 4 with
    # 4 accepted tokens 5 / 1.16 = 4.3.
    assert policy.drafting_can_pay((0, 4), 16, 8, 1.0, 0.002, 0.0)
    # No base cost: 5 / 0.16 ties 1 / 0.032, which does not beat it.
    assert not policy.drafting_can_pay((0, 4), 16, 8, 0.0, 0.002, 0.0)
    # 2 rows, 1 + 0.1 * tokens: plain 1 / 1.2 = 0.83; width 2 drafting at 3 x the base cost:
    # 3 / (4 + 0.6) = 0.65 loses; at 1 x: 3 / 2.6 = 1.15 wins.
    assert not policy.drafting_can_pay((0, 2), 2, 8, 1.0, 0.1, 3.0)
    assert policy.drafting_can_pay((0, 2), 2, 8, 1.0, 0.1, 1.0)
    assert not policy.drafting_can_pay((0, 4), 16, 0, 1.0, 0.002, 0.0)  # budget 0: no gain
    assert policy.drafting_can_pay((2, 4), 16, 0, 0.0, 0.002, 0.0)  # no width 0 to fall back on


def test_drafting_pays_by_predicted_gain():
    # Rows: budget 8 live, budget 0 live, dead. Cost 1 + 0.1 * tokens over 3 rows: a plain
    # pass costs 1.3, one verifying width 4 costs 1 + 0.1 * 3 * 5 = 2.5, so drafting wins iff
    # (1 + gain) * 1.3 > 2.5, gain > 0.923 (below the live rows' mean budget, 4).
    budget_B, live_B = jnp.asarray([8, 0, 8]), jnp.asarray([True, True, False])
    def pays(g, budget_B=budget_B, width=4.0, draft=0.0):
        return bool(policy.drafting_pays(budget_B, live_B, jnp.float32(g), jnp.float32(width),
                                         3, 1.0, 0.1, draft))

    assert pays(0.95) and not pays(0.9)
    assert not pays(0.95, width=5.0)  # 1 + 0.1 * 3 * 6 = 2.8 > 1.95 * 1.3
    assert not pays(0.95, draft=0.1)  # drafting's own cost
    assert not pays(5.0, budget_B=jnp.asarray([0, 0, 8]))  # live rows' budgets 0: no gain
    assert float(policy.predicted_gain(jnp.int32(3), jnp.int32(10), 4)) == np.float32(7 / 11)
    assert float(policy.predicted_gain(jnp.int32(0), jnp.int32(0), 4)) == 4.0
    assert float(policy.expected_width(jnp.int32(8), jnp.int32(1), 16)) == 12.0


def test_fitted_cost_model_is_shared_by_runs_of_the_same_shape(tmp_path, monkeypatch):
    """A new workdir reads the fit that an earlier run kept beside the compilation cache (its
    numbers are constants of the compiled rollout), and keeps a copy for its own resume."""
    fits = iter([(1.0, 0.5, None), (2.0, 0.25, None), (3.0, 0.125, (0.75, 0.001))])
    monkeypatch.setattr(speculative, "measure_cost_model", lambda *args: next(fits))
    model = Decoder(preset("tiny"))
    spec = rollout_config()
    fit = lambda run, shared, drafting=(): policy.fitted_cost_model(  # noqa: E731
        model, None, 4, (0, 4), "reference", str(tmp_path / run / "cost_model.json"),
        shared_dir=shared,
        drafting=drafting)
    shared = str(tmp_path / "xla")
    assert fit("a", shared) == fit("b", shared) == (1.0, 0.5, None)  # drafting not timed
    assert json.loads((tmp_path / "b" / "cost_model.json").read_text())["c_base_s"] == 1.0
    assert fit("c", "") == (2.0, 0.25, None)  # nothing shared: measured anew
    # Drafting timed; its shapes are part of the key, so the fits above are not reused.
    assert fit("d", shared, (spec, 4, 20, 30)) == fit("e", shared, (spec, 4, 20, 30)) == (
        3.0, 0.125, (0.75, 0.001))


def test_drafting_cost_is_a_line_through_the_full_and_an_eighth_bucket(monkeypatch):
    """`drafting_loops` times a drafting and a plain pass for all 32 rows and for 4 of them
    (the corpus is the whole batch's either way); `drafting_line` takes off the wider
    verification the per-token cost prices (16 drafted tokens per row at 2^-10 s) and returns
    the line through the two differences: here 0.25 s + 0.0625 s per row, exact in binary."""
    c_tok, kmax = 2.0 ** -10, 16
    monkeypatch.setattr(speculative, "pass_timer", lambda *a: lambda rows, drafting: None)
    spec = rollout_config(widths=(0, 4, kmax))
    assert sorted(speculative.drafting_loops(None, None, spec, 32, 4, 10, 24)) == [
        (4, False), (4, True), (32, False), (32, True)]
    assert sorted(speculative.drafting_loops(None, None, spec, 1, 1, 10, 24)) == [
        (1, False), (1, True)]

    def seconds(rows_list):
        plain = lambda rows: 1.0 + 2.0 ** -6 * rows  # noqa: E731
        return {(rows, drafting): plain(rows) + (
            0.25 + 0.0625 * rows + c_tok * rows * kmax if drafting else 0.0)
            for rows in rows_list for drafting in (True, False)}

    assert speculative.drafting_line(seconds((4, 32)), kmax, c_tok) == (0.25, 0.0625)
    assert speculative.drafting_line(seconds((1,)), kmax, c_tok) == (0.3125, 0.0)  # flat


def test_timers_run_the_rollout_shapes_in_a_loop():
    """The verification and pass timers compile and run their loops on these shapes (on a
    CPU the numbers mean nothing; the GPU's are in BENCHMARKS.md)."""
    model = Decoder(preset("tiny"))
    spec = rollout_config()
    params = speculative.timing_params(model, layout())
    verification = speculative.verification_timer(model, params, "reference", context=16)
    passes = speculative.pass_timer(model, params, spec, 8, 4, 10, 24)
    loops = [verification(4, 0), verification(2, 4), passes(8, True), passes(2, False)]
    assert all(0 < s < 60 for s in policy.loops_seconds(loops))


def test_timed_loops_compile_at_once_and_run_one_at_a_time(monkeypatch):
    """Each loop's backend compile starts when the loop is made, on a thread of its own:
    here every compile waits at a barrier for the other two, which a compile run inline by
    `timed_loop` would never reach (BrokenBarrierError after 20 s). Only once all are
    compiled does `loops_seconds` run them, each a warm-up and 3 timed runs, in order."""
    barrier, ran = threading.Barrier(3, timeout=20), []
    compile_ = jax.stages.Lowered.compile

    def waiting_compile(self, *a, **k):
        barrier.wait()
        return compile_(self, *a, **k)

    monkeypatch.setattr(jax.stages.Lowered, "compile", waiting_compile)
    def body(tag):
        return lambda i, x: jax.debug.callback(lambda: ran.append(tag), ordered=True) or x + 1

    loops = [policy.timed_loop(body(tag), jnp.int32(0), iters=2) for tag in "abc"]
    seconds = policy.loops_seconds(loops)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    assert ran == [tag for tag in "abc" for _ in range(4 * 2)]


def test_the_pass_timer_times_drafting_passes_at_the_widest_width(monkeypatch):
    """What `pass_timer` loops over is the rollout's own pass: a drafting pass drafts, takes
    the widest width through the width branch and is tested by the drafting loop's `pays`; a
    plain pass verifies one token per row."""
    model = Decoder(preset("tiny"))
    spec = rollout_config(widths=(0, 2, 4))
    loops = []
    monkeypatch.setattr(policy, "timed_loop", lambda body, init, *a: loops.append(
        (body, init, a)))
    loop = speculative.pass_timer(model, speculative.timing_params(model, layout()), spec, 8,
                                  4, 10, 24)
    for drafting in (True, False):
        loop(4, drafting)
        body, init, args = loops.pop()
        stats = jax.jit(lambda c, *a: body(0, c, *a))(init, *args)[4]
        assert int(stats.passes) == 1 and int(stats.width_N[0]) == (4 if drafting else 0)
        assert (int(stats.drafted) > 0) == drafting  # drafts made and verified


def test_fixed_sum_does_not_depend_on_the_order_of_additions():
    """The float32 sum of these values in two orders differs (so two devices that reduce
    their rows in other orders could branch differently); `fixed_sum` gives one result,
    the true sum to within rows / 2 units of 1 / FIXED_POINT."""
    x = np.random.default_rng(0).uniform(0, 17, 4096).astype(np.float32)
    orders = [x, x[::-1], np.sort(x)]
    floats = {float(np.cumsum(o, dtype=np.float32)[-1]) for o in orders}
    assert len(floats) > 1
    fixed = {float(policy.fixed_sum(jnp.asarray(o))) for o in orders}
    assert len(fixed) == 1
    assert abs(fixed.pop() - float(np.sum(x, dtype=np.float64))) <= 4096 / 2 / policy.FIXED_POINT
