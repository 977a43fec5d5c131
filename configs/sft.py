"""Supervised training on an embedded task's reference solutions only (no RL).

    python -m jaxrl.main --config=configs/sft.py:task=sort --workdir=/tmp/sft
"""
import pathlib

from jaxrl.config_utils import load_config_file


def get_config(arg=None):
    c = load_config_file(str(pathlib.Path(__file__).with_name("grpo.py")), arg)
    c.sft.steps = c.sft.steps or 300
    c.rl.steps = 0
    return c
