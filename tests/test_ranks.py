"""The global rank every command reads: one rank 0 per run, under torchrun, srun and Lightning's launcher."""

from __future__ import annotations

import pytest

from synthrel_lightning.ranks import global_rank

VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "PMI_RANK")


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3", "LOCAL_RANK": "1", "NODE_RANK": "1"}, 3),  # torchrun
        ({"SLURM_PROCID": "5"}, 5),  # srun, one task per device
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "1", "NODE_RANK": "0"}, 1),  # Lightning's launcher in an sbatch script
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, 1),  # node 1's first process is not rank 0
        ({"LOCAL_RANK": "0", "NODE_RANK": "2", "LOCAL_WORLD_SIZE": "4"}, 8),
        ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, 0),
        ({"PMI_RANK": "2"}, 2),
    ],
)
def test_global_rank_from_the_launchers_variables(env: dict[str, str], rank: int, monkeypatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert global_rank() == rank
