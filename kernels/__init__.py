"""Pallas kernels with pure-jnp references of the same signatures (ARCHITECTURE.md, invariant 6).

Nothing here imports jaxrl: the library depends on kernels, never the reverse.
"""
