"""Test-wide setup: 8 fake CPU devices for the mesh tests, exact float32 matmuls, and a
home directory of the session's own, so that the jobs' persistent compilation cache
(`~/.cache/jaxrl/xla`, configs/scale.py) is the session's: tests neither read programs a
user's runs (or another checkout's venv) left there nor leave theirs behind. Subprocesses
inherit it."""
import os
import tempfile

os.environ["HOME"] = tempfile.mkdtemp(prefix="jaxrl-tests-home-")

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (after XLA_FLAGS, which jax reads once)

jax.config.update("jax_default_matmul_precision", "highest")
