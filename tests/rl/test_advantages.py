"""Group advantages against hand-worked values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.rl.advantages import group_advantages, has_signal_P

REWARDS = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]


def test_grpo_binary_group():
    # Row 0: mean 0.5, population std 0.5; row 1: no spread, advantage 0 (not NaN).
    adv = group_advantages(jnp.array(REWARDS), "grpo")
    a = 0.5 / (0.5 + 1e-6)
    np.testing.assert_allclose(adv, [[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]], rtol=1e-6)
    assert adv.dtype == jnp.float32


def test_grpo_uses_population_std():
    # [3, 1, 2, 2]: mean 2, deviations [1, -1, 0, 0], population var 2/4, std 0.7071068.
    # (A G - 1 std, sqrt(2/3) = 0.8164966, would give +-1.2247449 instead.)
    adv = group_advantages(jnp.array([[3.0, 1.0, 2.0, 2.0]]), "grpo", eps=0.0)
    np.testing.assert_allclose(adv, [[1.4142135, -1.4142135, 0.0, 0.0]], rtol=1e-6)


def test_drgrpo_only_centres():
    adv = group_advantages(jnp.array(REWARDS), "drgrpo")
    np.testing.assert_allclose(adv, [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])


def test_rloo_leaves_one_out():
    # [1, 0, 0, 0]: 1 - mean(0, 0, 0) = 1; 0 - mean(1, 0, 0) = -1/3.
    # [2, 4, 6]: 2 - 5 = -3, 4 - 4 = 0, 6 - 3 = 3.
    adv = group_advantages(jnp.array([[1.0, 0.0, 0.0, 0.0]]), "rloo")
    np.testing.assert_allclose(adv, [[1.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6)
    adv = group_advantages(jnp.array([[2.0, 4.0, 6.0]]), "rloo")
    np.testing.assert_allclose(adv, [[-3.0, 0.0, 3.0]], rtol=1e-6, atol=1e-6)


def test_integer_rewards_and_jit():
    rewards = jnp.array(REWARDS, jnp.int32)
    f = jax.jit(group_advantages, static_argnames="method")
    for method in ("grpo", "drgrpo", "rloo"):
        adv = f(rewards, method=method)
        assert adv.dtype == jnp.float32
        np.testing.assert_allclose(adv, group_advantages(rewards.astype(jnp.float32), method),
                                   rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(jnp.ones((3, 1)), "rloo")
    with pytest.raises(ValueError, match=r"'ppo'.*'grpo', 'drgrpo', 'rloo'"):
        group_advantages(jnp.ones((3, 4)), "ppo")
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        group_advantages(jnp.ones((4,)), "grpo")


def test_has_signal():
    rewards = jnp.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0],
                         [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(has_signal_P(rewards), [True, False, False, True])
