import importlib.metadata
import json
import logging
import subprocess

import ml_collections
import pytest

from jaxrl import resume

SAFE = {"total_steps", "eval", "logging.every"}


def test_flatten_config_gives_dotted_json_values():
    config = ml_collections.ConfigDict({
        "seed": 3, "rl": {"kl_coef": 0.01, "clip": (0.2, 0.28), "spec": {"on": True}},
        "model": {"path": None}, "extra": {}, "dtype": complex(1, 2)})
    flat = resume.flatten_config(config)
    assert flat == {"seed": 3, "rl.kl_coef": 0.01, "rl.clip": [0.2, 0.28], "rl.spec.on": True,
                    "model.path": None, "extra": {}, "dtype": "(1+2j)"}
    assert json.loads(json.dumps(flat)) == flat  # what the checkpoint gives back compares equal
    assert resume.flatten_config(config.to_dict()) == flat


def test_resume_check_refuses_unsafe_changes_naming_each_one():
    saved = {"task": "countdown", "rl.kl_coef": 0.01, "total_steps": 10, "model.layers": 2}
    current = {"task": "sort", "rl.kl_coef": 0.01, "total_steps": 20, "rl.new_field": 1}
    with pytest.raises(ValueError) as info:
        resume.resume_check(saved, current, SAFE, checkpoint_dir="/w/checkpoints")
    assert str(info.value) == (
        "cannot resume from /w/checkpoints: the config differs from the saved one in 3 "
        "field(s) that change the train state or the data stream:\n"
        "  config.model.layers: saved 2, now '<absent>'\n"
        "  config.rl.new_field: saved '<absent>', now 1\n"
        "  config.task: saved 'countdown', now 'sort'\n"
        "To start fresh, use a new --workdir, or delete /w/checkpoints")


def test_resume_check_allows_and_logs_safe_changes(caplog):
    saved = {"rl.kl_coef": 0.01, "total_steps": 10, "eval.every": 5, "eval.num": 8,
             "logging.every": 1, "logging.dir": "a"}
    current = dict(saved, total_steps=20, **{"eval.every": 10, "logging.every": 2})
    with caplog.at_level(logging.WARNING):
        changed = resume.resume_check(saved, current, SAFE, checkpoint_dir="/w/checkpoints")
    assert changed == {"eval.every": (5, 10), "logging.every": (1, 2), "total_steps": (10, 20)}
    assert ("config.eval.every: 5 -> 10; config.logging.every: 1 -> 2; "
            "config.total_steps: 10 -> 20") in caplog.text
    # "logging.every" is safe, its sibling "logging.dir" is not; "eval" covers all of eval.
    with pytest.raises(ValueError, match=r"config.logging.dir: saved 'a', now 'b'"):
        resume.resume_check(saved, dict(saved, **{"logging.dir": "b"}), SAFE,
                            checkpoint_dir="/w/checkpoints")
    assert resume.resume_check(saved, dict(saved), SAFE, checkpoint_dir="/w") == {}


def test_resume_check_without_a_saved_config_warns(caplog):
    with caplog.at_level(logging.WARNING):
        assert resume.resume_check({}, {"task": "sort"}, SAFE, checkpoint_dir="/w/ck") == {}
    assert "/w/ck has no saved config" in caplog.text


def test_code_version_names_this_checkout():
    version = resume.code_version()
    head = subprocess.run(["git", "-C", str(resume.__file__.rsplit("/", 1)[0]), "rev-parse",
                           "HEAD"], capture_output=True, text=True).stdout.strip()
    assert version["git_commit"] == (head or None)
    assert isinstance(version["git_dirty"], bool) == bool(head)
    assert version["version"] == importlib.metadata.version("jaxrl")  # the test venv has it
