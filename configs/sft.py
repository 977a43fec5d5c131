"""Supervised training on an embedded task's reference solutions only (no RL).

    python -m jaxrl.main --config=configs/sft.py:task=sort --workdir=/tmp/sft
"""
import pathlib

from jaxrl.config_utils import load_config_file


def get_config(arg=None):
    # 300 SFT steps unless the arg says otherwise (a later key wins in parse_arg).
    c = load_config_file(str(pathlib.Path(__file__).with_name("grpo.py")),
                         ",".join(filter(None, ("sft_steps=300", arg))))
    c.rl.steps = 0
    return c
