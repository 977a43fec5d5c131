"""Pallas kernels with pure-jnp references of the same signatures (ARCHITECTURE.md, invariant 6).

Each kernel is a package: `reference.py` (jnp), `triton.py` (GPU), `mosaic.py` (TPU), and its
entry point in `__init__.py`; `dispatch.py` is the `impl` switch they share, and
`sampling.py` the position-keyed sampling rule. Nothing here imports jaxrl: the library
depends on kernels, never the reverse.
"""
