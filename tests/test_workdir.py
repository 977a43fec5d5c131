import os
import signal
import socket
import subprocess
import sys

import pytest

from jaxrl.workdir import WorkdirInUseError, lock_path, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = """
import sys
from jaxrl.workdir import workdir_lock
with workdir_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test closes stdin
"""


def _start_holder(workdir):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO))
    assert holder.stdout.readline() == "locked\n"
    return holder


@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_a_second_run_is_refused_naming_the_first(tmp_path, end):
    workdir = tmp_path / "run"
    holder = _start_holder(workdir)
    try:
        with pytest.raises(WorkdirInUseError) as info:
            with workdir_lock(workdir):
                pass
        assert str(info.value) == (
            f"workdir {workdir} is in use by process {holder.pid} on host "
            f"{socket.gethostname()} (lock file {workdir / '.lock'}); wait for that run to "
            "end or stop it, or use another --workdir")
    finally:
        if end == "exit":
            holder.stdin.close()
        else:
            holder.send_signal(signal.SIGKILL)  # the kernel drops a dead process's flock
        holder.wait()
    with workdir_lock(workdir) as path:
        assert path == str(workdir / ".lock")


def test_the_lock_is_released_on_exit_and_per_process_index(tmp_path):
    with workdir_lock(tmp_path) as path:
        with pytest.raises(WorkdirInUseError, match=f"process {os.getpid()} on host"):
            with workdir_lock(tmp_path):
                pass
        with workdir_lock(tmp_path, process_index=1) as other:  # another host's file
            assert other == lock_path(tmp_path, 1) == str(tmp_path / ".lock.1")
    with workdir_lock(tmp_path) as again:
        assert again == path
