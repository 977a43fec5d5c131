"""launch/: the TPU VM and SLURM scripts, run against stand-in `gcloud`, `srun`, `scontrol`
and `python3` executables on PATH that record their arguments (no cloud is reachable here):
what would run, on which workers, in what order."""
import os
import pathlib
import shlex
import subprocess

from configs import ROOT

RECORDER = """#!/usr/bin/env bash
printf '%s' "{name}" >> "$RECORD"
for a in "$@"; do printf ' %q' "$a" >> "$RECORD"; done
echo >> "$RECORD"
{extra}
"""


def stand_ins(tmp_path, **extra):
    """A bin dir of recording executables; `extra[name]` runs after the recording."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "srun", "scontrol", "python3"):
        path = bin_dir / name
        path.write_text(RECORDER.format(name=name, extra=extra.get(name, "")))
        path.chmod(0o755)
    return bin_dir


def calls(record: pathlib.Path) -> list[list[str]]:
    return [shlex.split(line) for line in record.read_text().splitlines()]


def run_script(tmp_path, bin_dir, args, **env):
    record = tmp_path / "record.txt"
    record.touch()
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                              "RECORD": str(record), **env})
    assert out.returncode == 0, out.stderr
    return calls(record), out


TRAIN = ["--config=configs/grpo.py:data=jsonl", "--config.mesh.fsdp=-1", "--config.mesh.data=1",
         "--workdir=gs://bucket/run 1"]


def test_tpu_vm_up_creates_installs_runs_everywhere_and_deletes(tmp_path):
    bin_dir = stand_ins(tmp_path)
    got, _ = run_script(tmp_path, bin_dir, [str(ROOT / "launch/tpu_vm.sh"), "up", *TRAIN],
                        TPU_NAME="grpo", ZONE="us-east5-a", ACCELERATOR_TYPE="v5p-32",
                        PROJECT="proj", DELETE_AFTER="1")
    where = ["--zone=us-east5-a", "--project=proj"]
    assert [c[:4] for c in got] == [["gcloud", "compute", "tpus", "tpu-vm"]] * 5
    create, scp, install, train, delete = got
    assert create[4:] == ["create", "grpo", "--accelerator-type=v5p-32",
                          "--version=v2-alpha-tpuv5", *where]
    assert scp[4] == "scp" and scp[6:] == ["grpo:jaxrl.tar.gz", "--worker=all", *where]
    assert install[4:7] == ["ssh", "grpo", "--worker=all"] and install[8:] == where
    assert install[7].startswith("--command=rm -rf ~/jaxrl") and "pip install" in install[7]
    # The same training command on every worker, its arguments quoted as given.
    assert train[4:7] == ["ssh", "grpo", "--worker=all"] and train[8:] == where
    command = train[7].removeprefix("--command=")
    assert shlex.split(command)[:3] == ["cd", "~/jaxrl", "&&"]
    assert shlex.split(command)[3:] == ["python3", "-m", "jaxrl.main", *TRAIN]
    assert delete[4:] == ["delete", "grpo", "--quiet", *where]
    assert (tmp_path / "logs" / "grpo.log").exists()


def test_tpu_vm_queued_resource_waits_until_active(tmp_path):
    # describe answers WAITING_FOR_RESOURCES once, then ACTIVE.
    bin_dir = stand_ins(tmp_path, gcloud="""
if [[ "$4" == describe ]]; then
  if [[ -e "$RECORD.seen" ]]; then echo ACTIVE; else touch "$RECORD.seen"; echo WAITING_FOR_RESOURCES; fi
fi""")
    got, out = run_script(tmp_path, bin_dir, [str(ROOT / "launch/tpu_vm.sh"), "create"],
                          TPU_NAME="q", ZONE="z", QUEUED="1", SPOT="1", POLL_S="0")
    assert [c[3:5] for c in got] == [["queued-resources", "create"],
                                    ["queued-resources", "describe"],
                                    ["queued-resources", "describe"]]
    assert "--node-id=q" in got[0] and "--spot" in got[0]
    assert "waiting for queued resource q" in out.stderr


def test_slurm_runs_one_process_per_gpu_by_auto_detection(tmp_path):
    bin_dir = stand_ins(tmp_path)
    got, _ = run_script(tmp_path, bin_dir, ["bash", str(ROOT / "launch/slurm.sbatch"), *TRAIN],
                        SLURM_SUBMIT_DIR=str(tmp_path))
    # srun starts the tasks; config.distributed stays empty (jax reads SLURM's environment).
    assert got == [["srun", "--kill-on-bad-exit=1", "python3", "-m", "jaxrl.main", *TRAIN]]


def test_slurm_per_host_names_the_coordinator_and_each_process(tmp_path):
    # scontrol lists two hosts; srun runs its command as the task of each node, in order.
    bin_dir = stand_ins(tmp_path, scontrol="printf 'node-a\\nnode-b\\n'", srun="""
for id in 0 1; do SLURM_NODEID=$id "${@:3}"; done""")
    got, _ = run_script(tmp_path, bin_dir, ["bash", str(ROOT / "launch/slurm.sbatch"), *TRAIN],
                        SLURM_SUBMIT_DIR=str(tmp_path), PER_HOST="1", SLURM_NNODES="2",
                        SLURM_JOB_NODELIST="node-[a-b]", PORT="4321")
    assert got[0] == ["scontrol", "show", "hostnames", "node-[a-b]"]
    assert got[1][:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
    dist = ["--config.distributed.coordinator_address=node-a:4321",
            "--config.distributed.num_processes=2"]
    assert got[2:] == [["python3", "-m", "jaxrl.main", *TRAIN, *dist,
                        f"--config.distributed.process_id={i}"] for i in (0, 1)]
