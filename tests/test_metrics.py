import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxrl.metrics import MetricsWriter, Progress, read_metrics, summary_table, to_scalar


def _tb_events(tb_dir):
    """All events of the TFRecord event files in tb_dir, oldest file first."""
    events = []
    for name in sorted(os.listdir(tb_dir)):
        with open(os.path.join(tb_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            pos += 12  # length and its CRC
            events.append(event_pb2.Event.FromString(data[pos:pos + length]))
            pos += length + 4  # payload and its CRC
    return events


def _scalars(events):
    return [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]


def _run(workdir, steps, start_step=0):
    with MetricsWriter(workdir, start_step=start_step) as writer:
        for step in steps:
            writer.write(step, {"reward": jnp.float32(step / 4), "loss": np.float64(1.0 / (step + 1)),
                                "tokens": np.int64(100 * step), "phase": "train"})


def test_jsonl_records(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(3, {"b": jnp.float32(0.5), "a": 2, "ok": jnp.bool_(True),
                         "half": jnp.asarray(0.25, jnp.bfloat16), "nan": float("nan"),
                         "inf": np.float32(np.inf), "ninf": -math.inf, "tag": "eval"})
        with pytest.raises(ValueError, match="'v' must be a scalar"):
            writer.write(4, {"v": np.zeros(2)})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(4, {"step": 1})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert line == ('{"step": 3, "a": 2, "b": 0.5, "half": 0.25, "inf": "Infinity", '
                    '"nan": "NaN", "ninf": "-Infinity", "ok": true, "tag": "eval"}\n')
    (record,) = read_metrics(tmp_path)
    assert math.isnan(record["nan"]) and record["inf"] == math.inf and record["ninf"] == -math.inf
    assert record["tag"] == "eval" and record["ok"] is True


def test_resumed_run_leaves_the_same_jsonl(tmp_path):
    _run(tmp_path / "full", range(6))
    # The interrupted run wrote steps 0-3, but its last checkpoint was at step 2.
    _run(tmp_path / "resumed", range(4))
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')  # a write cut short by the crash
    _run(tmp_path / "resumed", range(2, 6), start_step=2)
    full = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == full
    assert [r["step"] for r in read_metrics(tmp_path / "full")] == list(range(6))


def test_truncation_refuses_a_corrupt_middle_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a metrics record"):
        MetricsWriter(tmp_path, start_step=1)


def test_tensorboard_scalars_and_purge_on_resume(tmp_path):
    _run(tmp_path, range(3))
    scalars = _scalars(_tb_events(tmp_path / "tb"))
    assert (2, "reward", 0.5) in scalars
    assert (2, "tokens", 200.0) in scalars
    assert not any(tag == "phase" for _, tag, _ in scalars)  # strings are JSONL-only
    assert len(scalars) == 3 * 3

    _run(tmp_path, range(1, 3), start_step=1)
    events = _tb_events(tmp_path / "tb")
    starts = [e.step for e in events if e.HasField("session_log")
              and e.session_log.status == event_pb2.SessionLog.START]
    assert starts == [0, 1]  # TensorBoard drops older events from these steps on
    assert len(_scalars(events)) == 3 * 3 + 2 * 3


def test_disabled_writer_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "w", enabled=False) as writer:
        writer.write(0, {"x": 1.0})
    assert not (tmp_path / "w").exists()


def test_to_scalar_types():
    assert to_scalar("x", jnp.int32(3)) == 3 and type(to_scalar("x", jnp.int32(3))) is int
    assert type(to_scalar("x", np.float16(0.5))) is float
    with pytest.raises(TypeError, match="'x' has type list"):
        to_scalar("x", [1.0])


class _FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_lines_in_a_plain_log():
    stream, clock = io.StringIO(), _FakeClock()
    progress = Progress(total_steps=10, start_step=4, every=2, stream=stream, clock=clock)
    clock.now += 30.0  # compilation: not part of the step time
    for step in range(5, 11):
        progress.update(step, reward=0.52, loss=jnp.float32(1.23456), kl=np.float64(1e-5))
        clock.now += 2.0
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 3  # steps 6, 8, 10
    assert lines[0].startswith("step  6/10 [############........]  60%")
    assert "elapsed 0:32" in lines[0] and "2.00s/step" in lines[0] and "ETA 0:08" in lines[0]
    assert lines[0].endswith("reward=0.52 loss=1.235 kl=1e-05")
    assert lines[-1].startswith("step 10/10 [####################] 100%") and "ETA 0:00" in lines[-1]


def test_progress_eta_unknown_before_two_updates_and_redraws_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream, clock = Tty(), _FakeClock()
    progress = Progress(total_steps=3, stream=stream, clock=clock)
    progress.update(1)
    assert "ETA ?" in stream.getvalue()
    clock.now += 0.25
    progress.update(2)
    assert "250ms/step" in stream.getvalue() and "\n" not in stream.getvalue()
    progress.update(3)
    assert stream.getvalue().count("\r") == 3 and stream.getvalue().endswith("\n")


def test_summary_table_alignment():
    table = summary_table({"steps": 1000, "final reward": 0.523456, "wall time": "1:02:03"},
                          title="Run summary")
    lines = table.splitlines()
    assert lines[0] == "Run summary"
    assert lines[1] == "-" * len("wall time     1:02:03")
    assert lines[2:] == ["steps         1000", "final reward  0.5235", "wall time     1:02:03"]
    assert summary_table([("a", "x"), ("bbb", "y")]) == "a    x\nbbb  y"
    assert json.dumps(summary_table([])) == '""'
