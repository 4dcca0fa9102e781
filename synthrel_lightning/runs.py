"""Where a run writes: a unique run id and the run's own folder, whatever the logger.

Every run gets a folder of its own (``<save_dir>/<name>/<version>``, the folder Lightning's
``ModelCheckpoint`` puts checkpoints under), so configurations, summaries, figures and
predictions of runs sharing a ``save_dir`` (sweeps) never overwrite each other.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import lightning as L

RUN_ID_ENV = "SYNTHREL_RUN_ID"
"""Environment variable holding the current run id; child processes (DDP ranks) inherit it."""


def new_run_id() -> str:
    """A sortable, collision-free run id: UTC timestamp plus 6 random hex digits (``20260105-142301-3fa9c2``)."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def current_run_id(fresh: bool = False) -> str:
    """The run id of this process: inherited from :data:`RUN_ID_ENV` in launched ranks, else a new one.

    ``fresh=True`` starts a new run (the CLI does so for each command, except in processes
    launched for a distributed run, which share their launcher's id).
    """
    launched = "LOCAL_RANK" in os.environ and RUN_ID_ENV in os.environ
    if fresh and not launched:
        os.environ[RUN_ID_ENV] = new_run_id()
    return os.environ.setdefault(RUN_ID_ENV, new_run_id())


def run_dir(trainer: L.Trainer) -> Path:
    """The folder of this run: the first logger's ``log_dir`` (CSV, TensorBoard) or ``<save_dir>/<name>/<version>``.

    The latter is where ``ModelCheckpoint`` writes for other loggers (wandb: ``<save_dir>/<project>/<run id>``);
    without a logger it is ``trainer.default_root_dir``. Call it on rank zero.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return Path(logger.log_dir)
    save_dir = logger.save_dir or trainer.default_root_dir
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(save_dir) / str(logger.name) / version


__all__ = ["RUN_ID_ENV", "current_run_id", "new_run_id", "run_dir"]
