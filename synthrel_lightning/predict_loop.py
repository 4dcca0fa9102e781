"""The pieces every offline generation run shares: a Lightning predict loop over work items kept on the host.

:class:`HostItemsDataModule` serves ``self.items`` (listed in ``setup``) as list batches in a fixed
order, :class:`BatchPredictionWriter` writes each batch's predictions as it comes, and
:func:`predict_trainer` builds the logger-free, checkpoint-free Trainer that runs them, with a bounded wait for the
other processes of a multi-process run; :func:`peers_lost_as` turns the failure of that process group (a
process killed, crashed, or never started) into :class:`ProcessGroupLost`, a one-line user-facing error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "BatchPredictionWriter",
    "HostItemsDataModule",
    "ProcessGroupLost",
    "collate_list",
    "describe_failure",
    "expected_processes",
    "is_process_group_failure",
    "lost_peers_message",
    "peers_lost_as",
    "predict_trainer",
]

log = logging.getLogger(__name__)


def collate_list(items: list[Any]) -> list[Any]:
    """Keep a batch a list: frames may differ in size and items carry Python objects."""
    return items


class HostItemsDataModule(L.LightningDataModule):
    """Base for predict-only generation: ``self.items`` (built in ``setup``) served in a fixed order, on the host."""

    items: Dataset | None
    batch_size: int
    num_workers: int

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Keep items on the host: the pipeline moves what it needs to its own device."""
        return batch

    def log_pending(self, command: str, where: object) -> None:
        """Log how many of ``self.items``' total are still to do (the rest is already in ``where``)."""
        items: Any = self.items
        pending, total = len(items), items.total
        log.info("%s: %d of %d items to do (%d already done in %s)", command, pending, total, total - pending, where)

    def predict_dataloader(self) -> DataLoader:
        """Items in a fixed order (Lightning adds a distributed sampler under DDP)."""
        if self.items is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run: no work items yet")
        return DataLoader(
            self.items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers, collate_fn=collate_list
        )


class BatchPredictionWriter(BasePredictionWriter):
    """A prediction writer called once per batch: subclasses implement :meth:`write_batch`."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")

    def write_batch(self, prediction: Any, batch_idx: int) -> None:
        """Write the predictions of batch ``batch_idx``."""
        raise NotImplementedError

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Hand the batch's predictions to :meth:`write_batch`."""
        self.write_batch(prediction, batch_idx)


def predict_trainer(
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    callbacks: list[L.Callback] | None = None,
    progress: bool = True,
    limit_predict_batches: int | float | None = None,
    process_group_timeout_s: float | None = None,
) -> L.Trainer:
    """A Trainer for a generation predict loop: no logger, no checkpoints, no model summary.

    ``process_group_timeout_s``: how long a process waits for the others at one collective step
    (joining at start-up, the barrier after setup, the final gather of counts) before it fails; None keeps
    Lightning's default (30 min). It applies to the DDP strategies (``"ddp"``, ``"ddp_spawn"``, ...)
    and to ``"auto"`` when more than one process is expected; other strategies keep their own.
    """
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=_with_timeout(strategy, accelerator, devices, num_nodes, process_group_timeout_s),
        num_nodes=num_nodes,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_predict_batches=limit_predict_batches,
    )


def expected_processes(accelerator: str, devices: int | str | list[int], num_nodes: int = 1) -> int:
    """How many processes Lightning starts for ``devices`` on ``num_nodes`` nodes (all GPUs for "auto"/-1)."""
    per_node: int
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        text = devices.strip()
        per_node = len([d for d in text.split(",") if d.strip()]) if "," in text else int(text)
    elif isinstance(devices, int) and devices != -1:
        per_node = devices
    elif accelerator in ("auto", "gpu", "cuda"):
        from lightning.fabric.accelerators.cuda import num_cuda_devices

        per_node = max(1, num_cuda_devices())
    else:
        per_node = 1
    return per_node * max(1, int(num_nodes))


def _with_timeout(
    strategy: Any, accelerator: str, devices: int | str | list[int], num_nodes: int, timeout_s: float | None
) -> Any:
    """``strategy`` as a DDP strategy object whose process group times out after ``timeout_s`` (where it is one)."""
    if timeout_s is None or not isinstance(strategy, str):
        return strategy
    if timeout_s <= 0:
        raise ValueError(f"process_group_timeout_s must be > 0 seconds, got {timeout_s}")
    from lightning.pytorch.accelerators import XLAAccelerator
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    timeout = timedelta(seconds=float(timeout_s))
    name = strategy.strip().lower()
    if name == "auto":
        several = expected_processes(accelerator, devices, num_nodes) > 1
        on_xla = accelerator in ("tpu", "xla") or (accelerator == "auto" and XLAAccelerator.is_available())
        if not several or on_xla:
            return strategy
        # As Lightning's own choice for "auto": fork in an interactive session (a notebook), else a new process.
        interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)
        return DDPStrategy(start_method="fork" if interactive else "popen", timeout=timeout)
    entry = StrategyRegistry[name] if name in StrategyRegistry else None
    if entry is not None and entry["strategy"] is DDPStrategy:
        return DDPStrategy(**entry["init_params"], timeout=timeout)
    log.warning(
        "process_group_timeout_s=%s applies to the DDP strategies ('auto', 'ddp', 'ddp_spawn', ...); strategy %r "
        "keeps its own process-group timeout",
        timeout_s,
        strategy,
    )
    return strategy


class ProcessGroupLost(ConnectionError):
    """The other processes of a multi-process run were lost (killed, crashed, never started, or too slow).

    A :class:`ConnectionError`, so the command line reports it in one line with exit status 2.
    """


_TRANSPORT_SIGNS = (
    "third_party/gloo",
    "connection closed by peer",
    "connection reset by peer",
    "nccl error",
    "ncclremoteerror",
    "ncclsystemerror",
    "watchdog caught collective operation timeout",
)
"""Words of the errors gloo and NCCL raise as a plain RuntimeError when a peer is gone or a collective timed out."""


def is_process_group_failure(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a failure of the distributed process group itself.

    That is a ``torch.distributed.DistError`` (store, network or backend error) or a RuntimeError that
    gloo/NCCL raise when a peer closed its connection or a collective timed out, not an error of the work.
    """
    import torch.distributed as dist

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, dist.DistError):
            return True
        if isinstance(current, RuntimeError) and any(s in str(current).lower() for s in _TRANSPORT_SIGNS):
            return True
        current = current.__cause__ or current.__context__
    return False


def describe_failure(err: BaseException) -> str:
    """The first line of a process-group error, without the source-file prefix gloo puts first."""
    text = str(err).strip().split("\n")[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    text = text.split(" This is typically caused by")[0].strip().rstrip(".")
    return f"{type(err).__name__}: {text[:300]}"


@contextmanager
def peers_lost_as(message: Callable[[BaseException], str]) -> Iterator[None]:
    """Re-raise a process-group failure in the block as :class:`ProcessGroupLost` with ``message(err)``.

    Any other error passes through unchanged.
    """
    try:
        yield
    except Exception as err:
        if not is_process_group_failure(err):
            raise
        raise ProcessGroupLost(message(err)) from err


def lost_peers_message(
    command: str, trainer: L.Trainer, counts: Callable[[], Mapping[str, int]], timeout_s: float
) -> Callable[[BaseException], str]:
    """The one-line report of a process whose peers were lost: the cause, what it wrote, how to resume.

    ``counts`` gives this process's counts when the failure is reported (e.g. ``{"done": 3, ...}``).
    """

    def message(err: BaseException) -> str:
        wrote = ", ".join(f"{n} {what}" for what, n in counts().items())
        return (
            f"{command}: process {trainer.global_rank} of {trainer.world_size} lost the other processes of the run "
            f"({describe_failure(err)}; one was killed, crashed, never started or did not answer within "
            f"process_group_timeout_s={timeout_s:g} s). This process wrote {wrote}; every completed item is on "
            "disk; rerun the same command to resume."
        )

    return message
