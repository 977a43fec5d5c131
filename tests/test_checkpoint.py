import logging
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl.checkpoint import Checkpointer, PreemptionGuard


@struct.dataclass
class TrainState:
    params: dict
    opt_state: optax.OptState
    step: int
    rng: jax.Array  # jax.random.key_data: uint32[2]
    data_position: np.int64
    loss_scale: float
    warm: bool
    name: str = struct.field(pytree_node=False, default="tiny")


TX = optax.adamw(1e-2, weight_decay=0.1)


def _make_state(seed: int) -> TrainState:
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "embed": jax.random.normal(k1, (8, 4), jnp.bfloat16),
        "head": {"w": jax.random.normal(k2, (4, 3), jnp.float32),
                 "b": jnp.zeros((3,), jnp.float32)},
    }
    return TrainState(params=params, opt_state=TX.init(params), step=0,
                      rng=jax.random.key_data(jax.random.key(seed + 100)),
                      data_position=np.int64(0), loss_scale=1.0, warm=False)


def _loss(params, x):
    h = x @ params["embed"].astype(jnp.float32)
    return jnp.mean((h @ params["head"]["w"] + params["head"]["b"]) ** 2)


@jax.jit
def _train_step(params, opt_state, rng_data):
    rng, sub = jax.random.split(jax.random.wrap_key_data(rng_data))
    x = jax.random.normal(sub, (5, 8))
    grads = jax.grad(_loss)(params, x)
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jax.random.key_data(rng)


def _advance(state: TrainState) -> TrainState:
    # Python and NumPy scalars stay on the host: a jitted step would return them as arrays.
    params, opt_state, rng = _train_step(state.params, state.opt_state, state.rng)
    return state.replace(params=params, opt_state=opt_state, rng=rng, step=state.step + 1,
                         data_position=state.data_position + np.int64(7),
                         loss_scale=state.loss_scale * 0.5, warm=True)


def _assert_identical(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        assert type(g) is type(w), (jax.tree_util.keystr(path), type(g), type(w))
        if hasattr(w, "dtype"):
            assert g.dtype == w.dtype, jax.tree_util.keystr(path)
            g, w = np.asarray(g), np.asarray(w)
            if g.dtype == jnp.bfloat16:
                g, w = g.view(np.uint16), w.view(np.uint16)
        np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))


def test_round_trip_is_exact(tmp_path):
    state = _advance(_advance(_make_state(0)))
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(2, state)
        restored = ckpt.restore(_make_state(1))  # a fresh init is the abstract state
    _assert_identical(restored, state)
    assert restored.step == 2 and restored.warm is True and restored.name == "tiny"
    assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
    assert int(restored.opt_state[0].count) == 2


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    uninterrupted = _make_state(0)
    for _ in range(6):
        uninterrupted = _advance(uninterrupted)

    state = _make_state(0)
    with Checkpointer(tmp_path) as ckpt:
        for _ in range(3):
            state = _advance(state)
        ckpt.save(state.step, state)
    with Checkpointer(tmp_path) as ckpt:
        state = ckpt.restore(_make_state(0))
    for _ in range(3):
        state = _advance(state)
    _assert_identical(state, uninterrupted)


def test_typed_prng_keys_round_trip(tmp_path):
    state = {"key": jax.random.key(7), "keys": jax.random.split(jax.random.key(8), 4)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        restored = ckpt.restore({"key": jax.random.key(0),
                                 "keys": jax.random.split(jax.random.key(0), 4)})
        assert restored["key"].dtype == state["key"].dtype
        for name in state:
            np.testing.assert_array_equal(jax.random.key_data(restored[name]),
                                          jax.random.key_data(state[name]))
        # Orbax itself would hand back a threefry key here; the checkpointer refuses.
        rbg = jax.ShapeDtypeStruct((), jax.random.key(0, impl="rbg").dtype,
                                   sharding=state["key"].sharding)
        with pytest.raises(ValueError, match=r"\['key'\].*key<fry>"):
            ckpt.restore({"key": rbg, "keys": state["keys"]})


def test_max_to_keep_interval_and_latest_step(tmp_path):
    state = {"w": jnp.arange(3.0)}
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(state)
        saved = [step for step in range(1, 8) if ckpt.save(step, {"w": state["w"] + step})]
        assert saved == [2, 4, 6]
        assert ckpt.save(7, {"w": state["w"] + 7}, force=True)
        assert not ckpt.save(7, state, force=True)  # already saved: skipped, not an error
        ckpt.wait()
        assert ckpt.all_steps() == [6, 7]
        assert ckpt.latest_step() == 7
        np.testing.assert_array_equal(ckpt.restore(state)["w"], np.arange(3.0) + 7)
        np.testing.assert_array_equal(ckpt.restore(state, step=6)["w"], np.arange(3.0) + 6)
        with pytest.raises(FileNotFoundError, match=r"step 4 .*\[6, 7\]"):
            ckpt.restore(state, step=4)
    with Checkpointer(tmp_path) as reopened:
        assert reopened.latest_step() == 7
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]


def test_restore_onto_shardings_of_the_abstract_state(tmp_path):
    devices = np.asarray(jax.devices())
    assert devices.size == 8
    mesh_a = jax.sharding.Mesh(devices.reshape(4, 2), ("data", "tensor"))
    mesh_b = jax.sharding.Mesh(devices.reshape(2, 4), ("fsdp", "tensor"))
    w = jnp.arange(64, dtype=jnp.float32).reshape(8, 8)
    state = {"w": jax.device_put(w, NamedSharding(mesh_a, P("data", "tensor"))),
             "b": jax.device_put(w[0].astype(jnp.bfloat16), NamedSharding(mesh_a, P("data"))),
             "count": jnp.int32(5)}
    abstract = {
        "w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh_b, P(None, "tensor"))),
        "b": jax.ShapeDtypeStruct((8,), jnp.bfloat16, sharding=NamedSharding(mesh_b, P())),
        "count": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh_b, P())),
    }
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        restored = ckpt.restore(abstract)
    for name in state:
        assert restored[name].sharding == abstract[name].sharding, name
        assert restored[name].dtype == abstract[name].dtype, name
        np.testing.assert_array_equal(np.asarray(restored[name], np.float32),
                                      np.asarray(state[name], np.float32))


def test_metadata_round_trip(tmp_path):
    meta = {"config": {"lr": 1e-3, "model": "qwen2_0p5b", "mesh": [1, 8, 1]}, "seed": 3,
            "note": None}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.ones(2)})
        ckpt.save(2, {"w": jnp.ones(2)}, metadata=meta)
        assert ckpt.restore_metadata() == meta
        assert ckpt.restore_metadata(1) == {}


def test_sigterm_sets_flag_and_restores_previous_handler():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    original = signal.signal(signal.SIGTERM, previous)
    try:
        guard = PreemptionGuard()
        assert not guard.reached(0)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not guard.reached(1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.reached(1)  # ... and we are still alive to assert it
        assert guard.received == signal.SIGTERM and calls == []
        guard.close()
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


def test_second_signal_goes_to_previous_handler():
    calls = []
    original = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with PreemptionGuard(signals=(signal.SIGTERM, signal.SIGINT)) as guard:
            signal.raise_signal(signal.SIGINT)
            assert guard.reached(1) and calls == []
            signal.raise_signal(signal.SIGINT)
            assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is not guard._handle
    finally:
        signal.signal(signal.SIGINT, original)


def test_ctrl_c_sets_the_flag_and_a_second_one_interrupts():
    original = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own
    try:
        with PreemptionGuard() as guard:
            assert guard.signals == (signal.SIGTERM, signal.SIGINT)
            assert not guard.reached(0)
            signal.raise_signal(signal.SIGINT)
            assert guard.reached(1) and guard.received == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, original)


def _save_steps_6_and_8(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        for step in (6, 8):
            ckpt.save(step, {"w": jnp.arange(256.0) + step}, metadata={"step": step})
    return tmp_path / "checkpoints" / "8"


def _truncate_biggest_state_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)


def _empty_the_directory(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


@pytest.mark.parametrize("damage, reason", [
    (_truncate_biggest_state_file, "OUT_OF_RANGE"),
    (_empty_the_directory, 'Item "metadata" was not found'),
    (lambda step_dir: shutil.rmtree(step_dir / "state"), 'Item "state" was not found'),
])
def test_restore_falls_back_from_a_damaged_newest_step(tmp_path, caplog, damage, reason):
    damage(_save_steps_6_and_8(tmp_path))
    abstract = {"w": jnp.zeros(256)}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [6, 8]  # orbax still lists the damaged step
        with caplog.at_level(logging.WARNING):
            step, state, metadata = ckpt.restore_latest_valid(abstract)
        assert step == 6 and metadata == {"step": 6}
        np.testing.assert_array_equal(state["w"], np.arange(256.0) + 6)
        warning, = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
        assert warning.startswith(f"Checkpoint step 8 in {tmp_path / 'checkpoints'} does not "
                                  "restore, skipped: ") and reason in warning
        assert "\n" not in warning
        np.testing.assert_array_equal(ckpt.restore(abstract)["w"], np.arange(256.0) + 6)
        # The resumed run reaches step 8 again: its save replaces the damaged one.
        assert ckpt.save(8, {"w": jnp.arange(256.0) - 8})
        ckpt.wait()
        step, state, _ = ckpt.restore_latest_valid(abstract)
    assert step == 8
    np.testing.assert_array_equal(state["w"], np.arange(256.0) - 8)


def test_no_restorable_step_lists_each_one(tmp_path):
    _truncate_biggest_state_file(_save_steps_6_and_8(tmp_path))
    _empty_the_directory(tmp_path / "checkpoints" / "6")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError) as info:
            ckpt.restore_latest_valid({"w": jnp.zeros(256)})
    lines = str(info.value).splitlines()
    assert lines[0] == f"no checkpoint in {tmp_path / 'checkpoints'} restores:"
    assert lines[1].startswith("  step 8: ValueError: OUT_OF_RANGE")
    assert lines[2].startswith("  step 6: KeyError: ") and 'Item "metadata"' in lines[2]
    assert lines[3] == ("To start fresh, use a new --workdir or delete "
                        f"{tmp_path / 'checkpoints'}")


def test_metadata_check_runs_before_the_state_and_its_refusal_propagates(tmp_path):
    _save_steps_6_and_8(tmp_path)
    seen = []

    def refuse_step_8(metadata):
        seen.append(metadata["step"])
        if metadata["step"] == 8:
            raise ValueError("config differs")

    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="config differs"):
            ckpt.restore_latest_valid({"w": jnp.zeros(256)}, check_metadata=refuse_step_8)
        assert seen == [8]  # a refused config is not a damaged step: 6 is not tried
    with Checkpointer(tmp_path / "fresh") as empty:
        with pytest.raises(FileNotFoundError, match="no checkpoint in"):
            empty.restore_latest_valid({"w": jnp.zeros(256)})
