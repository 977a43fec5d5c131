"""The GRPO step: fused equals split, the policy learns a bandit, the sampler and trainer
agree on log-probs, zero-signal groups and non-finite gradients leave params alone, and a
host reward that raises or hangs scores 0 without stopping the step."""
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import rl_config as default_rl_config, rollout_config
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from jaxrl.models.tokenizer import CharTokenizer
from jaxrl.rl import grpo, state as state_lib
from jaxrl.rl.rewards import HostReward
from jaxrl.rollout import drafter

CFG = preset("tiny", vocab_size=16, dtype="float32", param_dtype="float32")
MODEL = Decoder(CFG)
P, G, N, L = 4, 4, 3, 3
STOP = (2,)
GOOD = 7  # the bandit pays for completions that start with this token


def rl_config(**kw):
    """configs/grpo.py's rl section at this file's batch shape."""
    return default_rl_config(**{"num_prompts": P, "num_generations": G, "num_minibatches": 2,
                                **kw})


class FirstTokenReward:
    """A JAX reward: 1 when the first completion token is GOOD (targets unused)."""
    is_host = False

    def __call__(self, tokens_BN, lengths_B, finished_B, targets_B):
        r = (tokens_BN[:, 0] == GOOD).astype(jnp.float32)
        return r, {"accuracy": r.mean()}


class ConstantReward(FirstTokenReward):
    def __call__(self, tokens_BN, lengths_B, finished_B, targets_B):
        return jnp.ones(tokens_BN.shape[:1]), {}


def new_state(lr=3e-2, seed=0):
    tx = state_lib.make_optimizer(state_lib.OptimConfig(warmup_steps=0, weight_decay=0.0, b1=0.9,
                                                        b2=0.99, grad_clip=1.0),
                                  optax.constant_schedule(lr))
    return state_lib.create(init_params(CFG, jax.random.key(seed)), tx, seed, with_reference=False)


def prompts():
    p = np.random.default_rng(0).integers(3, 16, (P, L)).astype(np.int32)
    return (jnp.asarray(p), jnp.full((P,), L, jnp.int32), jnp.zeros((P, 1), jnp.int32),
            jnp.arange(P, dtype=jnp.int32))


PLAIN = rollout_config(speculative=False)


def make(reward, split, n=N, rollout=PLAIN, **kw):
    return grpo.make_step(MODEL, rl_config(split_phases=split, **kw), rollout, reward,
                          max_new_tokens=n, stop_tokens=STOP, pad_id=0)


def test_fused_and_split_steps_agree():
    fused, split = make(FirstTokenReward(), False), make(FirstTokenReward(), True)
    s1, s2 = new_state(), new_state()
    for _ in range(3):
        s1, m1 = fused(s1, *prompts())
        s2, m2 = split(s2, *prompts())
        for k in m1:
            np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert "time/rollout_s" in m2 and m2["time/update_s"] > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 s1.params, s2.params)
    assert int(s1.step) == 3


def test_grpo_learns_a_bandit_and_sampler_matches_trainer():
    step = make(FirstTokenReward(), False)
    state = new_state()
    rewards = []
    for _ in range(25):
        state, m = step(state, *prompts())
        rewards.append(float(m["reward"]))
        # float32 on CPU: the trainer recomputes the sampler's log-probs exactly enough.
        assert float(m["sampler_trainer_logprob_gap"]) < 1e-4
    # Chance is 1/16 per row; the policy must have moved a lot of mass onto GOOD.
    assert np.mean(rewards[:3]) < 0.3
    assert np.mean(rewards[-3:]) > 0.8, rewards


def test_groups_without_signal_leave_params_unchanged():
    step = make(ConstantReward(), False)
    state = new_state()
    before = jax.tree.map(np.asarray, state.params)
    state, m = step(state, *prompts())
    assert float(m["groups_with_signal"]) == 0.0
    assert float(m["grad_norm"]) == 0.0
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))


def test_nonfinite_gradients_skip_the_update():
    class NaNReward(FirstTokenReward):
        def __call__(self, tokens_BN, lengths_B, finished_B, targets_B):
            r, m = super().__call__(tokens_BN, lengths_B, finished_B, targets_B)
            return r.at[0].set(jnp.nan), m

    state = new_state()
    before = jax.tree.map(np.asarray, state.params)
    state, m = make(NaNReward(), False, mask_zero_signal=False, num_minibatches=1)(state, *prompts())
    assert float(m["skipped_nonfinite"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))
    assert int(state.step) == 1  # the step is counted, the update is not applied


def test_host_reward_survives_errors_and_timeouts():
    tok = CharTokenizer()

    def fn(text, answer):
        if answer == "raise":
            raise RuntimeError("user reward bug")
        if answer == "hang":
            time.sleep(3)
        return 1.0

    reward = HostReward(fn, tok, timeout_s=0.5, workers=16)
    answers = ["ok", "raise", "hang", "ok"]
    tokens = jnp.full((4 * G, N), 20, jnp.int32)
    r, m = reward(tokens, jnp.full((4 * G,), N), jnp.ones((4 * G,), bool),
                  [a for a in answers for _ in range(G)])
    np.testing.assert_array_equal(r, np.repeat([1.0, 0.0, 0.0, 1.0], G))
    assert m["reward_errors"] == G and m["reward_timeouts"] == G

    step = make(HostReward(lambda text, answer: float(len(text) > 0), tok), True)
    prompts_PL, lengths_P, _, ids_P = prompts()
    state, metrics = step(new_state(), prompts_PL, lengths_P, ["a"] * P, ids_P)
    assert int(state.step) == 1 and metrics["reward_errors"] == 0


def test_bad_minibatch_split_is_named():
    with pytest.raises(ValueError, match="num_minibatches=3 must divide"):
        make(FirstTokenReward(), False, num_minibatches=3)


def test_speculative_rollouts_leave_training_unchanged():
    """Several GRPO steps on recurring prompts, with and without DAS, in the default config
    (configs/grpo.py: old log-probs recomputed by the trainer): the same tokens, so the same
    training, bit for bit. Only the sampler's own log-probs differ (a k+1-token
    verification pass rounds differently from a 1-token decode step), and with the default
    nothing that feeds the loss reads them: the one metric made from them is skipped.

    Here in one jit (rl.split_phases=False), where the update is compiled together with
    each rollout; the default split phases are proven in the training loop itself, every
    RL metric at every step, by tests/test_reproduce.py (the DAS table's runs)."""
    n = 12
    # One bucket: compaction's identity is the unit tests' and the DAS table's
    # (tests/rollout/test_speculative.py, tests/test_reproduce.py).
    das_cfg = rollout_config(speculative=True, widths=(0, 4), compaction=False,
                             verify_impl="reference", fit_cost_model=False)
    assert rl_config().old_logprobs == "recompute"  # the default this test is about
    plain_step = make(FirstTokenReward(), False, n=n)
    spec_step = make(FirstTokenReward(), False, n=n, rollout=das_cfg)
    s1 = new_state()
    s2 = new_state().replace(history=drafter.init_history(P, 2, G, n))
    accepted = 0
    for _ in range(4):
        s1, m1 = plain_step(s1, *prompts())
        s2, m2 = spec_step(s2, *prompts())
        for k in m1:
            if k.startswith("time/") or k == "sampler_trainer_logprob_gap":
                continue
            np.testing.assert_array_equal(m1[k], m2[k], err_msg=k)
        accepted += int(m2["spec/accepted"])
        assert int(m2["spec/passes"]) <= int(m2["spec/plain_passes"])
    assert accepted > 0
    assert (np.asarray(s2.history.owner_S) == np.arange(P)).all()
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)


def test_host_reward_counts_invalid_values_and_scores_them_zero(caplog):
    returned = {"one": 1, "half": np.float32(0.5), "big": 3e38, "neg": -2.0,
                "array": np.asarray(0.25), "nan": float("nan"), "inf": float("inf"),
                "-inf": -np.inf, "1e40": 1e40, "huge_int": 10**400, "str": "1", "true": True,
                "np_true": np.bool_(True), "none": None, "list": [1.0], "complex": 1j}
    reward = HostReward(lambda text, answer: returned[answer], CharTokenizer())
    answers = list(returned)
    with caplog.at_level(logging.WARNING):
        r, m = reward(jnp.full((len(answers), N), 20, jnp.int32), jnp.full((len(answers),), N),
                      jnp.ones((len(answers),), bool), answers)
    valid = [1.0, 0.5, np.float32(3e38), -2.0, 0.25]
    np.testing.assert_array_equal(r, np.asarray(valid + [0.0] * (len(answers) - 5), np.float32))
    assert m["reward_invalid"] == len(answers) - 5
    assert m["reward_errors"] == 0 and m["reward_timeouts"] == 0
    assert m["accuracy"] == 4 / len(answers)  # 1, 0.5, 3e38, 0.25; 1e40 and True do not count
    assert "11 reward(s) were not finite float32 numbers and scored 0; the first, sample 5: nan" \
        in caplog.text


def test_a_temperature_argument_samples_as_the_configured_temperature():
    """`rollout_phase(temperature=t)` (bench.rollout's sweep: one program for every t) draws
    the same tokens as a config with `rl.temperature = t`; and t matters: another one draws
    other tokens. Speculative decoding, whose verification reads the temperature too; plain
    decoding gets the same `SamplingParams` (rollout_phase makes them before the branch)."""
    n, st = 8, new_state().replace(history=drafter.init_history(P, 2, G, 8))
    # One bucket (no compaction): the temperature reaches every pass the same way.
    das_cfg = rollout_config(speculative=True, widths=(0, 4), compaction=False,
                             verify_impl="reference", fit_cost_model=False)
    p, plen, _, ids = prompts()
    kw = dict(max_new_tokens=n, stop_tokens=STOP, pad_id=0)
    run = jax.jit(lambda t, rl_t: grpo.rollout_phase(
        MODEL, rl_config(temperature=rl_t), das_cfg, st, p, plen, ids, temperature=t, **kw)[0],
        static_argnums=1)
    fixed = run(None, 0.5).tokens_BN
    np.testing.assert_array_equal(run(jnp.float32(0.5), 1.0).tokens_BN, fixed)
    assert not np.array_equal(run(jnp.float32(2.0), 1.0).tokens_BN, fixed)
