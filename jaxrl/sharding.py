"""Meshes, partition rules, placement, and the multi-controller runtime (invariant 5).

Params carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`, `head_dim`);
batches, the KV cache and the DAS history carry `batch` on their leading dim. The rule
table (`config.sharding.rules`, configs/*.py) maps each logical name to mesh axes of a
mesh with axes `data`, `fsdp`, `tensor` (`config.mesh`, -1 = all remaining devices).
A `Layout` is the two together: it places arrays and, inside jitted code, constrains
activations where XLA's propagation would otherwise replicate them. The same code runs on
one CPU, 8 fake CPU devices, GPUs or a multi-host TPU slice; with several processes
(`config.distributed`, `initialize`) each feeds only its rows of a global batch.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, tuple[str, ...]]]


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


@dataclasses.dataclass(frozen=True)
class LogicalRules:
    """`config.sharding.rules`: the mesh axes each logical axis is split over, () = replicated.

    One field per logical name the code uses, so a name the code does not know (or one the
    config forgets) is an error naming it (`config_utils.build`)."""

    batch: tuple[str, ...]
    vocab: tuple[str, ...]
    embed: tuple[str, ...]
    heads: tuple[str, ...]
    kv_heads: tuple[str, ...]
    mlp: tuple[str, ...]
    head_dim: tuple[str, ...]

    def __post_init__(self):
        for name, axes in dataclasses.asdict(self).items():
            bad = [a for a in axes if a not in MESH_AXES]
            if bad or len(set(axes)) != len(axes):
                raise ValueError(f"config.sharding.rules.{name}={axes!r}: mesh axes must be "
                                 f"distinct names from {MESH_AXES}")


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """`config.sharding`: the partition rules."""

    rules: LogicalRules

    @property
    def table(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple(dataclasses.asdict(self.rules).items())


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`config.distributed`: the multi-controller runtime (`jax.distributed.initialize`).

    All empty / -1: auto-detect (Cloud TPU VMs, SLURM, ...; see `initialize`), else one
    process. Set all three to name the coordinator (`host:port`) yourself."""

    coordinator_address: str
    num_processes: int
    process_id: int

    def __post_init__(self):
        given = (bool(self.coordinator_address), self.num_processes != -1, self.process_id != -1)
        if any(given) and not all(given):
            raise ValueError(f"config.distributed: set all of coordinator_address, num_processes "
                             f"and process_id, or none (auto-detect); got {dataclasses.asdict(self)}")
        if all(given) and not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"config.distributed.process_id={self.process_id} must lie in "
                             f"[0, num_processes={self.num_processes})")


def initialize(cfg: DistributedConfig) -> None:
    """Starts JAX's multi-controller runtime before anything touches devices.

    Explicit fields go to `jax.distributed.initialize`; otherwise JAX's own cluster detection
    runs (Cloud TPU VM metadata, SLURM's environment, Open MPI, ...), and where it finds no
    cluster this stays a single process."""
    if cfg.coordinator_address:
        jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id)
        return
    from jax._src.clusters import ClusterEnv  # JAX's detectors: what initialize() would use

    # As jax.distributed.initialize() picks: opt-in detectors (mpi4py: merely installed, on
    # many GPU images) count only when asked for by name.
    found = [env.__name__ for env in ClusterEnv._cluster_types
             if not env.opt_in_only_method and env.is_env_present()]
    if not found:
        return
    jax.distributed.initialize()
    logging.info("jax.distributed (%s): process %d of %d", found[0], jax.process_index(),
                 jax.process_count())


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
            raise ValueError(f"{len(devices)} devices do not divide into config.mesh "
                             f"{dict(shape)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                         f"devices; there are {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for logical, mesh_axes in rules:
        if logical == name:
            return tuple(mesh_axes)
    raise ValueError(f"no sharding rule for logical axis {name!r}; config.sharding.rules "
                     f"covers {[r[0] for r in rules]}")


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


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and its rule table: where each array lives. Hashable, so jitted functions take
    it as a static argument and constrain their activations by it."""

    mesh: Mesh
    rules: Rules

    @property
    def batch_axes(self) -> tuple[str, ...]:
        return tuple(a for a in _mesh_axes_for("batch", self.rules) if self.mesh.shape[a] > 1)

    @property
    def batch_ways(self) -> int:
        """Devices a batch's rows are split over (the product of its mesh axes' sizes)."""
        return math.prod(self.mesh.shape[a] for a in self.batch_axes)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def sharding(self, logical: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(P(*logical), shape, self.mesh, self.rules))

    def tree(self, logical_tree, shapes_tree):
        """NamedShardings for a pytree, from its logical specs (PartitionSpecs of logical
        names) and its shapes (arrays or ShapeDtypeStructs)."""
        return jax.tree.map(lambda spec, x: self.sharding(spec, x.shape), logical_tree,
                            shapes_tree, is_leaf=lambda x: isinstance(x, P))

    def rows(self, x):
        """`x` (a pytree; inside jit) constrained to split its leading dim over the batch
        axes, the rest replicated: where XLA would otherwise replicate a batch."""
        return jax.tree.map(
            lambda a: jax.lax.with_sharding_constraint(a, self.sharding(("batch",), a.shape)), x)

    def check_rows(self, rows: int, what: str) -> None:
        """A batch of `rows` must split evenly over the batch axes (and the processes)."""
        ways = max(self.batch_ways, jax.process_count())
        if rows % ways:
            raise ValueError(f"{what} = {rows} rows does not split over the batch axes "
                             f"{self.batch_axes or '()'} of mesh {dict(self.mesh.shape)} "
                             f"({ways} ways); use a multiple of {ways}")


def make_layout(mesh_cfg: MeshConfig | Mapping[str, int], sharding_cfg: ShardingConfig,
                devices: Sequence[Any] | None = None) -> Layout:
    """The mesh of `config.mesh` over `devices` (default: all, of every process) with the
    rules of `config.sharding`; fails naming a size that does not fit the devices."""
    return Layout(make_mesh(mesh_cfg, devices), sharding_cfg.table)


def place(tree, shardings):
    """`tree` (host or device values, the same on every process) put on `shardings` (a
    pytree of them, or one for every leaf). Leaves already there stay where they are (only
    their sharding is relabelled, see `put`); with several processes each places only its
    own shards (device_put cannot reach another host's devices)."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(x, s):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim):
            # There already, but relabelled `s` (no data moves): a jitted step's first call
            # would otherwise see another sharding (an uncommitted array's) than its own
            # outputs carry, and compile the same program twice.
            return x if x.sharding == s else jax.device_put(x, s)
        if jax.process_count() == 1:
            return jax.device_put(x, s)
        return jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x[idx]))
    return jax.tree.map(put, tree, shardings)


def shard_params(params, param_axes, layout: Layout):
    """Places params on the mesh by their logical axes (`decoder.param_axes(cfg)`)."""
    return place(params, layout.tree(param_axes, params))


def process_rows(sharding: jax.sharding.Sharding, shape: Sequence[int]) -> slice:
    """The rows (dim 0) of a global array of `shape` that this process's devices hold: one
    contiguous block (the batch axes are the mesh's leading axes, devices in process order)."""
    spans = sorted({idx[0].indices(shape[0])[:2]
                    for idx in sharding.addressable_devices_indices_map(tuple(shape)).values()})
    lo, hi = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError(f"this process's rows {spans} of a {shape[0]}-row batch are not one "
                         "block; order the mesh's devices by process")
    return slice(lo, hi)


def shard_batch(tree, layout: Layout):
    """A batch pytree (every leaf with the global batch's rows on dim 0, host arrays) as
    global arrays with the rows split over the batch axes: each process feeds only its own
    rows (`jax.make_array_from_process_local_data`). A leaf whose rows do not divide over
    the batch axes (P prompts, fewer than the devices) is replicated."""
    def put(x):
        x = np.asarray(x)
        s = layout.sharding(("batch",), x.shape)
        return jax.make_array_from_process_local_data(s, x[process_rows(s, x.shape)], x.shape)
    return jax.tree.map(put, tree)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array split over dim 0 (`process_rows`), on the host."""
    process_rows(x.sharding, x.shape)  # one block, or a ValueError
    shards = {s.index[0].indices(x.shape[0])[0]: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])
