"""The scanned layers' param form (`stack_layers`, `for_forwards`); their logits are tested
against transformers in test_hf.py. Per-layer rematerialisation (`remat`): the same forward
program, the same gradients, less memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl.models.config import preset
from jaxrl.models.decoder import Decoder, for_forwards, init_params, stack_layers
from jaxrl.models.kv_cache import init_cache


def test_stack_layers_puts_layer_i_at_index_i():
    """Twelve layers, so that a lexicographic order (layers_10 before layers_2) would show."""
    cfg = preset("tiny", num_layers=12, dtype="float32", param_dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    stacked = stack_layers(params)
    assert not any(k.startswith("layers_") for k in stacked)
    assert set(stacked) == {k for k in params if not k.startswith("layers_")} | {"layers"}
    for i in range(12):
        jax.tree.map(lambda s, p: np.testing.assert_array_equal(s[i], p),
                     stacked["layers"], params[f"layers_{i}"])


def test_for_forwards_stacks_only_for_a_scanning_model_and_only_once():
    cfg = preset("tiny", dtype="float32", param_dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    assert for_forwards(Decoder(cfg), params) is params
    stacked = for_forwards(Decoder(cfg, scan_layers=True), params)
    assert "layers" in stacked
    assert for_forwards(Decoder(cfg, scan_layers=True), stacked) is stacked


def test_a_scanning_decoder_refuses_a_per_layer_cache():
    cfg = preset("tiny", dtype="float32", param_dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    tokens_BT = jax.numpy.zeros((1, 3), jax.numpy.int32)
    with pytest.raises(ValueError, match="stacked=True"):
        Decoder(cfg, scan_layers=True).apply({"params": params}, tokens_BT,
                                             cache=init_cache(cfg, 1, 8), prefill=True)


# Rematerialisation reruns each layer's forward ops in the backward pass; XLA may fuse the
# rerun differently, which can reorder a reduction but computes no other function.
# Reordering an n-term float32 sum moves it by <= 2 gamma_n sum|terms| ~ 2 n u sum|terms|
# (u = 2^-24; Higham, section 4.2). The longest reductions here: a weight gradient's sum over
# B T = 4 x 24 = 96 token slots and the MLP width 128, so 2 gamma_128 ~ 1.5e-5 relative to
# the sum of |terms|, which on this random-init tiny model stays within a few times the
# largest result: 1e-4 of each array's largest magnitude covers it with a margin.
RTOL_OF_MAX = 1e-4


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_keeps_the_forward_program_and_the_gradients_and_cuts_memory(scan_layers):
    cfg = preset("tiny", vocab_size=32, num_layers=4, dtype="float32", param_dtype="float32")
    params = init_params(cfg, jax.random.key(0))
    b, t = 4, 24
    tokens_BT = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size)
    plain, remat = (Decoder(cfg, scan_layers=scan_layers, remat=r) for r in (False, True))

    def forward(model):
        return jax.jit(lambda p: model.apply({"params": p}, tokens_BT)).lower(params).as_text()

    assert forward(remat) == forward(plain)  # rollouts and evaluation are unchanged

    def compiled_loss_grad(model):
        def loss(p):
            logp_BTV = jax.nn.log_softmax(model.apply({"params": p}, tokens_BT))
            return -jnp.mean(jnp.take_along_axis(logp_BTV[:, :-1], tokens_BT[:, 1:, None], -1))
        return jax.jit(jax.value_and_grad(loss)).lower(params).compile()

    compiled = [compiled_loss_grad(m) for m in (plain, remat)]
    (v0, g0), (v1, g1) = (c(params) for c in compiled)
    assert v1 == v0  # the primal forward is the same program's
    for got, want in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, rtol=0,
                                   atol=RTOL_OF_MAX * max(np.abs(want).max(), 1e-30))

    # Without remat the backward starts with every layer's internals alive, the float32
    # attention probabilities [B, H, T, T] among them (the softmax's gradient reads them);
    # with it, only the layer inputs and one layer's internals at a time. So remat must
    # save at least the probabilities of Y - 1 layers.
    temp = [c.memory_analysis().temp_size_in_bytes for c in compiled]
    probs_bytes = b * cfg.num_heads * t * t * 4
    assert temp[0] - temp[1] >= (cfg.num_layers - 1) * probs_bytes, temp


def test_bf16_unembed_gradient_rounds_the_logit_gradient_once():
    """`unembed` below float32 rounds the float32 logit gradient to bfloat16 before its two
    backward GEMMs; against JAX's autodiff of the float32-accumulating product (float32
    GEMMs, results rounded to bfloat16) it differs only by that rounding. Per element the
    bound is derived: rounding g to bfloat16 moves each term g_v w_v by <= u |g_v w_v| (u =
    2^-8, bfloat16's unit roundoff), the sum by <= u sum |g_v w_v|; each result's final
    rounding to bfloat16 adds <= u |result|; float32 accumulation over <= 40 terms adds
    <= 40 * 2^-24 sum |g_v w_v|, inside the 2^-16 slack."""
    from jaxrl.models.decoder import unembed

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 16)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(16, 40)) * 0.1, jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(2, 3, 40)), jnp.float32)
    autodiff = lambda x, w: jnp.einsum("bte,ev->btv", x, w,  # noqa: E731
                                       preferred_element_type=jnp.float32)
    out, vjp = jax.vjp(unembed, x, w)
    want_out, want_vjp = jax.vjp(autodiff, x, w)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, want_out)  # the forward is the same product
    u = 2.0 ** -8
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    abs_g, abs_x, abs_w = np.abs(f64(g)), np.abs(f64(x)), np.abs(f64(w))
    sums = {"dx": np.einsum("btv,ev->bte", abs_g, abs_w),
            "dw": np.einsum("bte,btv->ev", abs_x, abs_g)}
    for name, got, want in zip(("dx", "dw"), vjp(g), want_vjp(g)):
        assert got.dtype == want.dtype == jnp.bfloat16, name
        got, want = f64(got), f64(want)
        tol = (u + 2.0 ** -16) * sums[name] + u * (np.abs(got) + np.abs(want))
        assert np.all(np.abs(got - want) <= tol), name
        assert not np.array_equal(got, want), name  # the rounding of g does happen
    # In float32 it is autodiff's own product.
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    for got, want in zip(jax.vjp(unembed, x32, w32)[1](g), jax.vjp(autodiff, x32, w32)[1](g)):
        np.testing.assert_array_equal(got, want)
