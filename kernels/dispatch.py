"""The `impl` switch of every kernel: a Pallas kernel or its jnp reference (ARCHITECTURE.md,
invariant 6), and the Pallas backend that lowers the kernel.

    IMPLS     "auto" | "pallas" | "reference"
    BACKENDS  "triton" (GPU) | "mosaic" (TPU); CPU runs either in interpret mode

"auto" runs the kernel on GPU only: on CPU interpreting a kernel is only slower, and the
Mosaic kernels have yet to run on a TPU. An explicit "pallas" never falls back: where the
kernel does not apply it raises a ValueError that says why.
"""
from __future__ import annotations

from typing import Callable

import jax

IMPLS = ("auto", "pallas", "reference")
BACKENDS = ("triton", "mosaic")
_PLATFORM = {"triton": "gpu", "mosaic": "tpu"}  # where each lowers; CPU interprets both


def default_backend() -> str:
    """The backend of the default device: Mosaic on TPU, Triton elsewhere."""
    return "mosaic" if jax.default_backend() == "tpu" else "triton"


def check_backend(backend: str | None) -> str:
    """`backend`, or the default device's when None; a ValueError if it is not in BACKENDS."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}; valid: {BACKENDS}")
    return backend


def platform_problem(backend: str) -> str | None:
    """Why `backend`'s kernels cannot run on the default platform, or None if they can."""
    platform = jax.default_backend()
    if platform in ("cpu", _PLATFORM[backend]):
        return None
    return (f"the {backend} backend lowers for {_PLATFORM[backend]} (and cpu, in interpret "
            f"mode), not for {platform}")


def call_impl(impl: str, reference: Callable, kernel: Callable,
              problem: Callable[..., str | None], *args):
    """`reference(*args)` or `kernel(*args, interpret=<on CPU>)`, as `impl` says (module
    docstring). `problem(*args)` says why the kernel of the default backend does not apply
    to these arguments (None: it does); "auto" then takes the reference, while "pallas"
    calls the kernel, whose own check raises."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; valid: {IMPLS}")
    platform = jax.default_backend()
    if impl == "reference" or (impl == "auto" and (platform != "gpu"
                                                   or problem(*args) is not None)):
        return reference(*args)
    return kernel(*args, interpret=platform == "cpu")
