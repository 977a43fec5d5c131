"""The prefill / no-cache attention (models/attention.py): JAX's dot_product_attention (the
XLA implementation, the function cuDNN's fused kernel computes) against the decoder's
reference attention within a float32 bound derived from the inputs; where cuDNN does not
apply, an explicit "cudnn" raises naming why and "auto" is the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.models import attention
from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, init_params
from kernels.ragged_attention import attend_reference

U = 2.0 ** -24  # float32 unit roundoff


def gamma(n):
    return n * U / (1 - n * U)


def rounding_bound(q_BTHD, k_BSKD, v_BSKD, mask_BTS):
    """|xla - reference| per output element, in float64 from the inputs. The two differ only
    in rounding: the scale (a division against a product: <= 2u relative each) and the order
    of the reductions. Reordering an n-term float sum moves it by <= 2 gamma_n sum|terms|
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 4.2), so
      |d score_ts| <= E_ts = 2 gamma_D sum_d |q_d k_d| / sqrt(D) + 4u |score_ts|;
    a softmax moves by <= p_ts (2 max_s E_ts + 2 gamma_S + 4u) (exp is 1-Lipschitz in log
    space, plus its own and the normaliser's rounding), and the weighted sum of values by
      |d out_t| <= sum_s p_ts |v_s| (2 max_s E_ts + 4 gamma_S + 4u).
    Doubled, for the second-order terms this first-order bound leaves out."""
    q, k, v = (np.asarray(x, np.float64) for x in (q_BTHD, k_BSKD, v_BSKD))
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    k_BSHD, v_BSHD = (np.repeat(x, h // kv, axis=2) for x in (k, v))
    abs_dot_BHTS = np.einsum("bthd,bshd->bhts", np.abs(q), np.abs(k_BSHD))
    score_BHTS = np.einsum("bthd,bshd->bhts", q, k_BSHD) / np.sqrt(d)
    valid = np.asarray(mask_BTS)[:, None]
    err_BHTS = 2 * gamma(d) * abs_dot_BHTS / np.sqrt(d) + 4 * U * np.abs(score_BHTS)
    e_BHT = np.where(valid, err_BHTS, 0).max(-1)
    score_BHTS = np.where(valid, score_BHTS, -1e300)  # a query with no key: uniform, unread
    p_BHTS = np.exp(score_BHTS - score_BHTS.max(-1, keepdims=True))
    p_BHTS /= p_BHTS.sum(-1, keepdims=True)
    weighted_BHTD = np.einsum("bhts,bshd->bhtd", p_BHTS, np.abs(v_BSHD))
    bound = weighted_BHTD * (2 * e_BHT + 4 * gamma(s) + 4 * U)[..., None]
    return 2 * bound.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def inputs(kv_heads, starts, ends, t=12, heads=4, head_dim=16, seed=0):
    kq, kk, kv_ = jax.random.split(jax.random.key(seed), 3)
    b = len(starts)
    q = jax.random.normal(kq, (b, t, heads, head_dim), jnp.float32)
    k = 2.0 * jax.random.normal(kk, (b, t, kv_heads, head_dim), jnp.float32)  # far from uniform
    v = jax.random.normal(kv_, (b, t, kv_heads, head_dim), jnp.float32)
    slot = np.arange(t)
    valid_BS = (slot >= np.asarray(starts)[:, None]) & (slot < np.asarray(ends)[:, None])
    mask = (slot[None, None, :] <= slot[None, :, None]) & valid_BS[:, None, :]
    return q, k, v, jnp.asarray(mask), valid_BS


@pytest.mark.parametrize("kv_heads", [1, 2, 4], ids=["mqa", "gqa", "mha"])
@pytest.mark.parametrize("starts,ends", [([0, 0, 0], [12, 12, 12]),  # no padding
                                         ([0, 3, 7], [12, 12, 12]),  # left padding
                                         ([0, 0, 0], [5, 9, 12])],  # right padding
                         ids=["full", "left", "right"])
def test_xla_attention_matches_reference(kv_heads, starts, ends):
    q, k, v, mask, valid_BS = inputs(kv_heads, starts, ends)
    got = np.asarray(attention.attend(q, k, v, mask, "xla"))
    want = np.asarray(attend_reference(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask))
    bound = rounding_bound(q, k, v, mask)
    # Queries with no visible key (before a row's start) are padding: nobody reads them.
    real_BT = valid_BS & (np.arange(q.shape[1]) >= np.asarray(starts)[:, None])
    diff = np.abs(got - want)[real_BT]
    assert np.all(diff <= bound[real_BT]), (diff.max(), bound[real_BT].min())
    assert np.all(np.isfinite(got))


def test_decoder_forward_with_xla_attention_matches_reference():
    cfg = preset("tiny", vocab_size=32, dtype="float32", param_dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (3, 12)), jnp.int32)
    valid = np.arange(12)[None] >= np.array([0, 3, 5])[:, None]  # left padding
    valid &= np.arange(12)[None] < np.array([12, 12, 9])[:, None]  # and right
    logits = {impl: np.asarray(Decoder(cfg, prefill_attention=impl).apply(
        {"params": params}, tokens, attention_mask_BT=jnp.asarray(valid)))
        for impl in ("reference", "xla")}
    # Each attention output differs by at most rounding_bound (~1e-6 relative here); the rest
    # of the forward is the same ops, and on this 2-layer random-init model a relative
    # perturbation of the residual stream reaches the logits amplified by O(1) per layer.
    # 1e-5 x max|logits| leaves a factor of 10 over 2 layers x (attention + MLP).
    tol = 1e-5 * np.abs(logits["reference"][valid]).max()
    np.testing.assert_allclose(logits["xla"][valid], logits["reference"][valid], rtol=0, atol=tol)


def test_cudnn_raises_where_it_does_not_apply_and_auto_is_the_reference(monkeypatch):
    q, k, v, mask, _ = inputs(2, [0, 3, 7], [12, 12, 12])
    want = np.asarray(attention.attend(q, k, v, mask, "reference"))
    with pytest.raises(ValueError, match="not on platform 'cpu'"):
        attention.attend(q, k, v, mask, "cudnn")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match="dtype float32"):
        attention.attend(q, k, v, mask, "cudnn")
    assert "head_dim a multiple of 8" in attention.cudnn_problem(
        jnp.zeros((1, 2, 1, 12), jnp.bfloat16), jnp.zeros((1, 2, 1, 12), jnp.bfloat16))
    assert "even sequence lengths" in attention.cudnn_problem(
        jnp.zeros((1, 3, 1, 16), jnp.bfloat16), jnp.zeros((1, 3, 1, 16), jnp.bfloat16))
    np.testing.assert_array_equal(np.asarray(attention.attend(q, k, v, mask, "auto")), want)
    with pytest.raises(ValueError, match="valid"):
        attention.attend(q, k, v, mask, "flash")
