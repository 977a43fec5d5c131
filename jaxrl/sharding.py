"""Meshes and partition rules (ARCHITECTURE.md, invariant 5).

Params carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`, `head_dim`);
data carries `batch`. A rule table maps each logical name to mesh axes of a mesh with axes
`data`, `fsdp`, `tensor`. Arrays placed with these shardings go into plain `jax.jit`
functions, which follow the data: the same code runs on one CPU, 8 fake CPU devices, GPUs
or a TPU slice.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`config.mesh`: devices along each axis; one size may be -1 = all remaining devices."""

    data: int
    fsdp: int
    tensor: int

    def __post_init__(self):
        sizes = dataclasses.astuple(self)
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"config.mesh sizes must be positive, with at most one -1; got "
                             f"{dataclasses.asdict(self)}")


def make_mesh(shape: Mapping[str, int] | MeshConfig,
              devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one size may be -1 for 'all remaining devices'."""
    if isinstance(shape, MeshConfig):
        shape = dataclasses.asdict(shape)
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid: {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive, with at most one -1; got {dict(shape)}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(shape)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices; "
                         f"there are {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    raise ValueError(f"no sharding rule for logical axis {name!r}; rules cover "
                     f"{[r[0] for r in rules]}")


def logical_to_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """Mesh spec for one array. A dim that its mesh axes do not divide is replicated
    (e.g. 2 KV heads on a tensor axis of 4), and a mesh axis is used at most once."""
    used: set[str] = set()
    out = []
    for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
        axes = tuple(a for a in _mesh_axes_for(name, rules) if a not in used and mesh.shape[a] > 1)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        else:
            out.append(None)
    return P(*out)


def tree_shardings(logical_tree, shapes_tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """NamedShardings for a pytree, from its logical specs and its shapes (arrays or
    ShapeDtypeStructs)."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, logical_to_spec(spec, x.shape, mesh, rules)),
        logical_tree, shapes_tree, is_leaf=lambda x: isinstance(x, P))


def shard_params(params, param_axes, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Places params on the mesh by their logical axes (`decoder.param_axes(cfg)`)."""
    return jax.device_put(params, tree_shardings(param_axes, params, mesh, rules))


def replicate_rest(tree, mesh: Mesh):
    """Leaves already placed over the whole mesh stay; the rest (scalars, counters, keys made
    on one device) are replicated over it and committed, so every step sees one device set
    and the second call of a jitted step hits the first call's compile cache."""
    replicated = NamedSharding(mesh, P())
    on_mesh = lambda x: (isinstance(x, jax.Array) and x.committed  # noqa: E731
                         and x.sharding.device_set == set(mesh.devices.flat))
    return jax.tree.map(lambda x: x if on_mesh(x) else jax.device_put(x, replicated), tree)


def _batch_axes(mesh: Mesh, rules: Rules) -> tuple[str, ...]:
    return tuple(a for a in _mesh_axes_for("batch", rules) if mesh.shape[a] > 1)


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Leading dim over the batch axes, the rest replicated."""
    axes = _batch_axes(mesh, rules)
    lead = None if not axes else (axes[0] if len(axes) == 1 else axes)
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def shard_batch(tree, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Places every array of a batch pytree with its leading dim over the batch axes."""
    ways = math.prod(mesh.shape[a] for a in _batch_axes(mesh, rules))

    def put(x):
        if np.shape(x)[0] % ways:
            raise ValueError(f"batch of {np.shape(x)[0]} rows does not split over {ways} "
                             f"devices of mesh {dict(mesh.shape)}")
        return jax.device_put(x, batch_sharding(mesh, np.ndim(x), rules))
    return jax.tree.map(put, tree)
