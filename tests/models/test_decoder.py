"""The scanned layers' param form (`stack_layers`, `for_forwards`); their logits are tested
against transformers in test_hf.py."""
import jax
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
