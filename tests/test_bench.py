"""Smoke runs of the DAS benchmarks on CPU, so that the scripts a GPU session depends on
still run, and so that the rollout benchmark's own identity check holds: in float32 every
variant's tokens equal plain decoding's."""
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_bench(name, *args):
    """`python -m bench.<name> args` from the repository root, as BENCHMARKS.md runs it."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_rollout_bench_variants_reproduce_plain_decoding(tmp_path):
    # Difficulty 0: rollouts of at most 129 tokens; the default (1) allows 433 per row.
    run_bench("rollout", "--preset", "tiny", "--difficulty", "0", "--dtype", "float32",
              "--sft-steps", "2", "--temperatures", "1.0,0.6",
              "--warm-steps", "1", "--steps", "1", "--pool", "2", "--num-generations", "4",
              "--repeats", "1", "--ablations", "", "--fit-cost-model", "0",
              "--widths", "0,4", "--profile-dir", str(tmp_path / "profile"),
              "--out-dir", str(tmp_path))
    report = json.loads((tmp_path / "rollout.json").read_text())
    assert not report["steps"][0]["cells"]  # the warm-up step measures nothing
    (step,) = report["steps"][1:]
    assert set(step["cells"]) == {"1.0", "0.6"}
    first = step["cells"]["1.0"]
    for name in ("plain_compacted", "das"):  # profiled at the last step; no times checked
        profile = first[name]["profile"]
        assert profile["kernels_per_pass"] > 0 and profile["top"], name
        assert 0 <= first[name]["drafting_passes"] <= first[name]["passes"]
    assert "profile" not in step["cells"]["0.6"]["das"]  # the first temperature's only
    assert first["plain_compacted"]["drafting_passes"] == 0
    for t, summary in report["summary"].items():
        assert set(summary) == {"plain_s", "entropy", "plain_compacted", "das"}
        # A mean entropy over a 128-token vocabulary lies in (0, log 128].
        assert 0 < summary["entropy"] <= math.log(128), t
        for name in ("plain_compacted", "das"):
            assert summary[name]["rows_identical"] == 1.0, (t, name)
            assert summary[name]["s"] > 0
        assert summary["plain_compacted"]["passes"] == summary["plain_compacted"]["plain_passes"]
    table = (tmp_path / "rollout.md").read_text()
    assert "| 1.0 | | das |" in table and "| 0.6 | | das |" in table


def test_rollout_bench_refuses_bad_flags_and_builds_each_ablation(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # `bench` imports from the root, as it runs there
    from bench import rollout

    for argv, named in ((["--ablations", "window_1,no_such"], "['no_such']"),
                        (["--sft-steps", "2", "--compile-ahead-at", "3"], "[0, 2]"),
                        (["--sft-steps", "0", "--compile-ahead-at", "2"], "[0, 1]")):
        with pytest.raises(SystemExit):
            rollout.parse_args(argv)
        assert named in capsys.readouterr().err, argv
    assert rollout.parse_args(["--ablations", ""]).ablations == []  # as BENCHMARKS.md runs it
    args = rollout.parse_args(["--ablations", "window_1,no_compaction,drafts_32"])
    base = rollout.make_config(args).rollout
    out = rollout.variants(args.ablations, base)
    assert list(out) == ["plain_compacted", "das", "window_1", "no_compaction", "drafts_32"]
    assert out["das"] == base and out["plain_compacted"].widths == (0,)
    assert out["window_1"] == base.replace(window=1)
    assert out["no_compaction"] == base.replace(compaction=False)
    assert out["drafts_32"].widths == (*base.widths, 32) and base.widths[-1] < 32


def test_das_pass_bench_times_every_piece(tmp_path):
    run_bench("das_pass", "--preset", "tiny", "--rows", "8", "--iters", "1",
              "--max-new-tokens", "24", "--prompt-len", "8", "--context", "16", "--widths", "2",
              "--out-dir", str(tmp_path))
    (row,) = json.loads((tmp_path / "das_pass.json").read_text())["results"]
    assert row["rows"] == 8
    assert set(row["ms"]) == {"decode_step", "verify_2", "corpus", "draft", "match",
                              "candidates", "switch", "no_switch"}
    assert all(ms > 0 for ms in row["ms"].values())


def test_prefill_attention_bench_checks_an_implementation_against_float32(tmp_path):
    # On CPU "xla" (jax.nn.dot_product_attention written by JAX) stands in for "cudnn": both
    # must land within the derived bound of the float32 answer, which the bf16 reference does.
    run_bench("prefill_attention", "--impls", "reference,xla", "--shapes", "2x16",
              "--models", "0.5B", "--out", str(tmp_path / "a.json"))
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["passed"] and [r["impl"] for r in report["rows"]] == ["reference", "xla"]
    for row in report["rows"]:  # times are not checked: a loaded CPU can make them < 0
        assert set(row["error"]) == {"out", "dq", "dk", "dv"} and 0 < max(row["error"].values())
        assert {"fwd_us", "fwd_bwd_us"} <= set(row)


def test_decode_profile_bench_reads_and_groups_its_trace(tmp_path):
    run_bench("decode_profile", "--models", "tiny", "--batches", "1", "--prompt-len", "8",
              "--new-tokens", "4", "--gbps", "100", "--trace-dir", str(tmp_path / "t"),
              "--out", str(tmp_path / "p.json"))
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    # A smoke run: the trace was written, read and grouped. Its numbers are differences of
    # two short runs, and on CPU the "kernels" are the host thread pool's tasks, whose count
    # and times vary from run to run, so no figure of it is checked here.
    assert row["top"] and all(g["kernel"] for g in row["top"])
    assert set(row) >= {"wall_ms_per_step", "busy_ms_per_step", "idle_ms_per_step",
                        "kernels_per_step", "hbm_floor_ms"}


def test_das_compile_bench_compiles_each_variant(tmp_path):
    run_bench("das_compile", "--preset", "tiny", "--batch", "8", "--group", "4",
              "--new-tokens", "16", "--variants", "das,compacted", "--trace-dir",
              str(tmp_path / "trace"), "--out", str(tmp_path / "c.json"))
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["das", "compacted"]
    assert all(r["lower_s"] > 0 and r["compile_s"] > 0 for r in rows)
    for r in rows:  # seconds: every traced span lies inside the compile's wall time, so a
        # group of `count` of them (same name; nested or on other threads) totals at most
        # count x that time (the group can exceed the wall time itself: 15.7 s against 15.4)
        for _, total, count, _ in r["host_spans"]:
            assert 0 < total <= count * r["compile_s"]


def test_cost_model_fit_bench_times_a_fit_in_a_child(tmp_path):
    run_bench("cost_model_fit", "--preset", "tiny", "--batch", "8", "--group", "4",
              "--new-tokens", "8", "--workers", "0", "--out", str(tmp_path / "f.json"))
    (row,) = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert row["workers"] == 0 and row["seconds"] > 0 and row["c_tok_s"] > 0


def test_fused_projections_bench_times_both_layouts_of_the_same_weights(tmp_path):
    out = tmp_path / "fused.json"
    run_bench("fused_projections", "--presets", "tiny", "--rows", "2", "--steps", "2",
              "--reps", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["rows"], r["fused"]) for r in rows] == [(2, False), (2, True)]
    # tiny: 2 layers of E=64, q=4x16, k=v=2x16, F=128 in bf16: 2 * 2 * (64*128 + 64*64 + 3*64*128)
    assert rows[0]["weight_bytes"] == rows[1]["weight_bytes"] == 147456
    assert all(r["ms_per_step"] > 0 for r in rows)
