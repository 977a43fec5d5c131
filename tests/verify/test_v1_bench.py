"""Smoke runs of the V1 benchmarks on CPU: each writes its table and its numbers."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_bench(name, *args):
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_v1_synthetic_bench_writes_its_table(tmp_path):
    run_bench("v1_synthetic", "--out", str(tmp_path), "--problems", "40", "--seeds", "2",
              "--n", "6", "--errors", "0.3", "--budgets", "1", "2")
    md = (tmp_path / "v1_synthetic.md").read_text()
    for row in ("| swiss (V1-Infer) |", "| knockout |", "| Best-of-Majority@N |",
                "| pointwise, total-matched N'=(N+V)/2 |", "| oracle Pass@N |"):
        assert row in md, row
    results = json.loads((tmp_path / "v1_synthetic.json").read_text())["results"]["0.3"]
    assert len(results) == 2
    for seed in results:
        pick, cost = seed["swiss (V1-Infer)"]["2x"]
        assert 0.0 <= pick <= 1.0 and cost == 6 + 12  # N generations + V = 2N calls
        assert seed["oracle Pass@N"]["1x"][0] >= seed["swiss (V1-Infer)"]["1x"][0]


def test_v1_judge_round_bench_counts_one_round(tmp_path):
    run_bench("v1_judge_round", "--out", str(tmp_path), "--preset", "tiny", "--dtype",
              "float32", "--problems", "2", "--n", "4", "--problem-words", "5",
              "--solution-words", "10", "--max-new-tokens", "4", "--repeats", "1")
    rows = json.loads((tmp_path / "v1_judge_round.json").read_text())["rows"]
    assert [(r["mode"], r["calls"]) for r in rows] == [("logits", 4), ("generate", 4)]
    # Logits mode reads two prompts per call (one per rating slot), generate mode one.
    assert rows[0]["prompt_tokens"] == 2 * rows[1]["prompt_tokens"]
    assert rows[0]["generated_tokens"] == 0 and 0 < rows[1]["generated_tokens"] <= 4 * 4
    assert "| logits |" in (tmp_path / "v1_judge_round.md").read_text()
