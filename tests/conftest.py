"""Test-wide setup: 8 fake CPU devices for the mesh tests, exact float32 matmuls."""
import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (after XLA_FLAGS, which jax reads once)

jax.config.update("jax_default_matmul_precision", "highest")
