"""A smoke run of bench/v1_synthetic.py: it writes its table and its numbers."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_v1_synthetic_bench_writes_its_table(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "v1_synthetic.py"), "--out",
                           str(tmp_path), "--problems", "40", "--seeds", "2", "--n", "6",
                           "--errors", "0.3", "--budgets", "1", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
