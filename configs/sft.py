"""Supervised training on an embedded task's reference solutions only (no RL).

    python -m jaxrl.main --config=configs/sft.py:task=sort --workdir=/tmp/sft
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("grpo_config", pathlib.Path(__file__).with_name("grpo.py"))
_grpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_grpo)


def get_config(arg=None):
    c = _grpo.get_config(arg)
    c.sft.steps = c.sft.steps or 300
    c.rl.steps = 0
    return c
