"""The global rank of this process, read the same way by every command: once per run, not once per node."""

from __future__ import annotations

import os
import sys

__all__ = ["global_rank", "is_global_zero"]

_GLOBAL_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
"""Launchers' global-rank variables: torchrun, SLURM (srun), LSF (jsrun), Open MPI, MPICH/Intel MPI."""


def global_rank() -> int:
    """This process's rank among all processes of the run (0 when alone).

    An initialised ``torch.distributed`` process group answers first; then ``RANK`` (torchrun);
    then Lightning's launcher variables, where ``LOCAL_RANK`` counts within a node and a process on
    node ``NODE_RANK`` > 0 is never rank 0 (``LOCAL_RANK`` alone would make one rank 0 per node);
    then the launchers' global ranks (``SLURM_PROCID`` under srun, LSF, MPI).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    if _int("RANK") is not None:
        return int(_int("RANK") or 0)
    local = _int("LOCAL_RANK")
    if local is not None:
        # Lightning's own launcher (which also runs inside an sbatch script, where SLURM_PROCID is
        # the script's 0 in every process it starts): LOCAL_RANK within node NODE_RANK.
        node = _int("NODE_RANK") or _int("GROUP_RANK") or 0
        per_node = _int("LOCAL_WORLD_SIZE") or local + 1
        return node * per_node + local
    for name in _GLOBAL_RANK_VARIABLES[1:]:
        value = _int(name)
        if value is not None:
            return value
    return 0


def _int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def is_global_zero() -> bool:
    """Whether this process is global rank 0 (the one that writes reports and shared files)."""
    return global_rank() == 0
