"""Entry point: `python -m jaxrl.main --config=configs/grpo.py --workdir=DIR`.

`config.job` names the job (jaxrl/jobs/): `train` (SFT warm-up then GRPO: configs/grpo.py,
configs/sft.py), `generate` (sample from a model: configs/generate.py) or `v1_infer`
(V1-Infer and its baselines: configs/v1_infer.py). The ConfigDict is
turned into the job's typed config once, which checks every field before anything compiles.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from jaxrl import sharding
from jaxrl.config_utils import build, parse_flags
from jaxrl.jobs import generate, train, v1_infer

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file (optionally :arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where outputs, checkpoints and metrics go.")
flags.mark_flags_as_required(["config", "workdir"])

JOBS = {"train": train, "generate": generate, "v1_infer": v1_infer}


def typed_config(config):
    """The job module and its typed config; errors name the bad field."""
    job = config.get("job")
    if job not in JOBS:
        raise ValueError(f"config.job={job!r}; valid: {tuple(JOBS)}")
    return JOBS[job], build(JOBS[job].CONFIG, config)


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    job, cfg = typed_config(flags.FLAGS.config)
    sharding.initialize(cfg.distributed)  # before anything touches devices
    logging.info("config:\n%s", cfg)
    job.run(cfg, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
