"""`python -m jaxrl.reproduce TABLE --small`, as CI runs it: every table's pipeline end to
end on a CPU (jobs, files, formats; not the numbers), the runs the tables share made once,
and DAS's identity inside the training loop (float32: exact)."""
import os
import pathlib
import subprocess
import sys

import pytest

from jaxrl.reproduce import report, runs
from jaxrl.verify import methods

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def reproduce(*args):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxrl.reproduce", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def table_rows(path: pathlib.Path) -> dict[str, list[str]]:
    """First cell -> the other cells, of every markdown table row but the header's."""
    rows = [line.strip("|").split(" | ") for line in path.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("|---")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}


def test_spread_is_the_mean_and_sample_std_over_seeds():
    assert report.spread([1.0, 2.0, 3.0]) == "2.000 +- 1.000"  # std with ddof 1: 1
    assert report.spread([0.25, None]) == "0.250 (1 seed)"
    assert report.spread([None]) == "-"


def test_a_failed_run_stops_the_table_naming_the_run_and_its_log(tmp_path):
    bad = runs.Run("bad_task", "grpo.py:task=nope")
    with pytest.raises(SystemExit, match=r"run bad_task failed(.|\n)*log.txt(.|\n)*nope"):
        runs.execute([bad], tmp_path, parallel=1, log=lambda m: None)
    assert not (bad.workdir(tmp_path) / runs.DONE).exists()


def assert_plots_and_headers(tmp_path, names):
    for name in names:
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG), name
        assert "Device: 1 x cpu" in (tmp_path / f"{name}.md").read_text()


def test_small_pairrl_and_v1_infer_tables_write_their_files_and_share_runs(tmp_path):
    out = str(tmp_path)
    reproduce("pairrl", f"--out={out}", "--small")
    pairrl = table_rows(tmp_path / "pairrl.md")
    assert set(pairrl) == {"standard RL", "PointRL", "PairRL"}
    assert all(len(cells) == 7 for cells in pairrl.values())

    # The v1_infer table's runs are the pairrl table's PairRL runs: nothing runs again.
    log = reproduce("v1_infer", f"--out={out}", "--small")
    assert log.count("finished earlier") == 2 and "started" not in log
    assert set(table_rows(tmp_path / "v1_infer.md")) == set(methods.METHODS)
    assert_plots_and_headers(tmp_path, ("pairrl", "v1_infer"))


def test_small_das_table_writes_its_files_and_das_leaves_training_unchanged(tmp_path):
    reproduce("das", f"--out={tmp_path}", "--small")
    das = table_rows(tmp_path / "das.md")
    assert set(das) == {"plain", "compacted plain", "das"}
    # Equal tokens and recomputed old log-probs: every RL metric equal to plain's, exactly.
    assert das["compacted plain"][-1] == das["das"][-1] == "identical"
    # DAS drafted (its acceptance is '-' where nothing was drafted): the identity held with
    # verification passes decoding rows, not one token per pass alone.
    assert das["das"][4] != "-"
    assert_plots_and_headers(tmp_path, ("das",))


def test_a_named_setting_reaches_the_runs_and_an_unknown_one_is_refused(tmp_path):
    from jaxrl.reproduce import __main__ as cli, pairrl
    train = pairrl.plan(pairrl.SETTINGS["short_rl"], [0], tmp_path)[0]  # standard RL, seed 0
    command = train.command(tmp_path)
    for flag in ("--config.rl.num_generations=8", "--config.pairrl.judge_generations=8",
                 "--config.pairrl.pair_slots=8"):
        assert flag in command
    assert "rl_steps=20" in " ".join(command)
    with pytest.raises(SystemExit, match=r"--setting='nope'.*\['default', 'short_rl', 'small'\]"):
        cli.main(["pairrl", "--setting", "nope", f"--out={tmp_path}"])
    with pytest.raises(SystemExit, match="--small means 'small'"):
        cli.main(["pairrl", "--setting", "short_rl", "--small", f"--out={tmp_path}"])
    assert not (tmp_path / "runs").exists()
