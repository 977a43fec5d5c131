"""The mesh, the partition rules, the multi-host runtime and the compilation cache: the
sections every job's config takes from here (configs/grpo.py, configs/generate.py,
configs/v1_infer.py), so one table serves them all.

    --config.mesh.data=2 --config.mesh.fsdp=4          # one size may be -1: all the rest
    --config.sharding.rules.embed=fsdp                 # a tuple of mesh axes; () = replicated
    --config.sharding.rules.batch="('data','fsdp')"
    --config.distributed.coordinator_address=10.0.0.2:1234 --config.distributed.num_processes=2 \\
        --config.distributed.process_id=0              # else auto-detected (TPU VM, SLURM)

jaxrl/sharding.py explains each; launch/README.md shows meshes for real slices.
"""
import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    # Devices along each mesh axis: data (batch rows), fsdp (batch rows and param shards),
    # tensor (heads and MLP columns). The default is data parallelism over every device.
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.sharding = ml_collections.ConfigDict()
    # Logical axis -> the mesh axes it is split over. A dim its axes do not divide stays
    # replicated (e.g. 2 KV heads over tensor=4). batch covers the prompts, the rollout rows
    # (B = P * G), the KV cache and the DAS history; the rest are param axes.
    c.sharding.rules = ml_collections.ConfigDict({
        "batch": ("data", "fsdp"),
        "vocab": ("tensor",),
        "embed": ("fsdp",),
        "heads": ("tensor",),
        "kv_heads": ("tensor",),
        "mlp": ("tensor",),
        "head_dim": (),
    })
    # jax.distributed: '' / -1 = auto-detect (Cloud TPU VM metadata, SLURM's environment),
    # or a single process where there is no cluster. Or set all three.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # host:port of process 0
    c.distributed.num_processes = -1
    c.distributed.process_id = -1
    # JAX's persistent compilation cache, shared by all runs of this user: a second run, or a
    # resumed one, reads what an earlier run compiled instead of compiling it ('' = off).
    c.compile = ml_collections.ConfigDict()
    c.compile.cache_dir = "~/.cache/jaxrl/xla"
    c.compile.min_compile_time_s = 0.0  # faster compiles are not written (0 = keep all)
    return c
