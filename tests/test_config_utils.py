import os
import subprocess
import sys

import ml_collections
import pytest

from jaxrl.config_utils import unknown_override_message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ml_collections.ConfigDict({
    "seed": 0,
    "rl": {"kl_coef": 0.1, "clip_high": 0.28, "advantage": "grpo", "spec": {"on": False}},
    "prompts": ["a"],
})


@pytest.mark.parametrize("flag, message", [
    ("--config.rl.foo=1", "config.rl.foo does not exist; config.rl has: advantage, clip_high, "
                          "kl_coef, spec"),
    ("--config.foo.bar=1", "config.foo does not exist; config has: prompts, rl, seed"),
    ("--config.rl.spec.of", "config.rl.spec.of does not exist; config.rl.spec has: on"),
    ("--noconfig.rl.spec.of", "config.rl.spec.of does not exist; config.rl.spec has: on"),
    ("--config.seed.x=1", ("config.seed.x does not exist: config.seed is the int 0, "
                           "not a group of fields")),
    ("--config.rl.kl_coef=abc", None),  # exists: a bad value is config_flags' to report
    ("--config.rl.spec.on", None),
    ("--config.prompts[0]=b", None),
    ("--workdir=x", None),
])
def test_unknown_override_message(flag, message):
    assert unknown_override_message(CONFIG, flag) == message


MAIN = """
from absl import app, flags
from ml_collections import config_flags
from jaxrl.config_utils import parse_flags
config_flags.DEFINE_config_file("config", None, "a config file", lock_config=True)
def main(argv):
    print("ran with kl_coef", flags.FLAGS.config.rl.kl_coef)
app.run(main, flags_parser=parse_flags)
"""

CONFIG_FILE = """
import ml_collections
def get_config(arg=None):
    return ml_collections.ConfigDict({"rl": {"kl_coef": 0.1, "clip_high": 0.28,
                                             "kind": arg or "grpo"}})
"""


def test_parse_flags_turns_the_traceback_into_one_line(tmp_path):
    (tmp_path / "cfg.py").write_text(CONFIG_FILE)

    def run(*flags):
        return subprocess.run([sys.executable, "-c", MAIN, *flags], capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=REPO))

    bad = run(f"--config={tmp_path / 'cfg.py'}:dr_grpo", "--config.rl.kl_coef=0.2",
              "--config.rl.foo=1")
    assert bad.returncode == 2
    assert bad.stderr == ("FATAL Flags parsing error: config.rl.foo does not exist; "
                          "config.rl has: clip_high, kind, kl_coef\n")
    good = run("--config", str(tmp_path / "cfg.py"), "--config.rl.kl_coef=0.2")
    assert good.returncode == 0 and good.stdout == "ran with kl_coef 0.2\n"
