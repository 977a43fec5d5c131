"""What the tables share: a value over seeds as mean +- spread, markdown, the header that
says where and how a table was made, and matplotlib set up for files."""
from __future__ import annotations

import datetime
import math
import pathlib
import subprocess
import sys

import numpy as np


def spread(values) -> str:
    """`mean +- sample std (n)` over seeds; the std is '-' for one seed, and missing values
    (None) are left out."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f} (1 seed)"
    return f"{np.mean(xs):.3f} +- {np.std(xs, ddof=1):.3f}"


def header(title: str, argv: list[str], device: str) -> list[str]:
    """The table's title and how it was made: device, date, commit, command."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"# {title}", "",
            f"Device: {device}. Date: {date}. Commit: {commit or 'unknown'}.", "",
            f"Command: `python -m jaxrl.reproduce {' '.join(argv)}`", ""]


def markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ([f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
            + [f"| {' | '.join(map(str, r))} |" for r in rows])


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def write(out: pathlib.Path, name: str, lines: list[str], log=print) -> None:
    text = "\n".join(lines) + "\n"
    (out / name).write_text(text)
    log(text)
    sys.stdout.flush()
