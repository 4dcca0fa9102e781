"""Start a command as one process of a multi-process run, as Lightning's launcher or torchrun would start it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_rank(rank: int, port: int, argv: list[str], world_size: int = 2) -> subprocess.Popen:
    """``python -m synthrel_lightning <argv>`` as process ``rank`` of ``world_size`` (LOCAL_RANK, MASTER_PORT)."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
        WORLD_SIZE=str(world_size),
    )
    cmd = [sys.executable, "-m", "synthrel_lightning", *argv]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The process's stdout and stderr once it ends (killed after ``timeout`` seconds)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def error_line(stderr: str) -> str:
    """The first ``error:`` line of a command's stderr."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert lines, stderr[-3000:]
    return lines[0]


def lost_peers_line_of_a_lone_process(argv: list[str], command: str, timeout_s: int = 5) -> str:
    """Run ``argv`` as process 0 of 2 with the other never started; its one error line (checked: exit 2, in time).

    The line must name the command, the store timeout and ``process_group_timeout_s``, and end with the
    resume hint; callers check what it says the process wrote.
    """
    import time

    started = time.monotonic()
    alone = launch_rank(0, free_port(), [*argv, "--process_group_timeout_s", str(timeout_s)])
    _, err = finish(alone, timeout=180)
    assert alone.returncode == 2, err[-3000:]
    assert time.monotonic() - started < 180  # not Lightning's default 30 minutes
    line = error_line(err)
    lead = f"error: {command}: process 0 of 2 lost the other processes of the run (DistStoreError"
    assert line.startswith(lead), line
    assert f"process_group_timeout_s={timeout_s} s" in line and "never started" in line, line
    assert line.endswith("rerun the same command to resume."), line
    return line
