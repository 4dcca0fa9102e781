"""Background outlier generation during training: the bank grows while the mixer keeps sampling it.

:class:`OutlierBankRefresh` starts, at each training epoch, a background process
(spawn context, so CUDA and diffusers initialise cleanly in it) that adds a fraction of
new outliers to the bank; training never waits for it. The mixer's
:class:`~synthrel_lightning.synthesis.sources.BankSource` picks up the new entries when
the dataset's ``set_epoch`` re-scans the bank. Failures in the background are counted
and logged; training continues.
"""

from __future__ import annotations

import logging
import math
import os
import queue as queue_mod
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.sources.base import OutlierSource
from synthrel_lightning.synthesis.sources.fill import fill_bank
from synthrel_lightning.synthesis.sources.producer import ProducerSpec

__all__ = ["OutlierBankRefresh", "ProducerSpec"]

log = logging.getLogger(__name__)


@dataclass
class _Job:
    epoch: int
    n: int
    process: Any
    queue: Any
    status: dict[str, Any] = field(default_factory=dict)


class OutlierBankRefresh(Callback):
    """Generates new outliers into ``bank_root`` in a background process at each training epoch.

    Args:
        producer: what makes outliers: a :class:`ProducerSpec` (built in the background
            process, e.g. an inpainting-engine producer on ``device``), or a picklable
            source / zero-argument factory.
        bank_root: the outlier bank the training mixer samples from.
        refresh_fraction: new outliers per epoch, as a fraction of the bank size.
        min_per_epoch / max_per_epoch: bounds on that number (``max_per_epoch`` None = no bound).
        device: device handed to the producer ("cuda:1" keeps generation off the training GPU).
        max_pending: background jobs allowed at once; an epoch starting while that many
            still run launches nothing (generation lags, training does not wait).
        all_ranks: every rank generates its own share (rank-keyed seeds) instead of rank 0 only.
        seed: base seed; item i of epoch e on rank r uses (seed, namespace, rank, epoch, i).
        wait_on_fit_end_s: how long the end of fitting waits for running jobs before stopping them.
        max_consecutive_failures: a job gives up after this many failures in a row.
        log_name: logged as ``train/<log_name>_size``, ``_generated``, ``_failures`` (at each epoch's start
            and end, running jobs' progress included).
    """

    def __init__(
        self,
        producer: ProducerSpec | OutlierSource | Callable[[], OutlierSource],
        bank_root: str | os.PathLike,
        refresh_fraction: float = 0.1,
        min_per_epoch: int = 8,
        max_per_epoch: int | None = None,
        device: str | None = "cpu",
        max_pending: int = 1,
        all_ranks: bool = False,
        seed: int = 0,
        namespace: str = "refresh",
        wait_on_fit_end_s: float = 0.0,
        max_consecutive_failures: int = 5,
        log_name: str = "bank",
    ) -> None:
        if refresh_fraction < 0:
            raise ValueError(f"refresh_fraction must be >= 0, got {refresh_fraction!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if min_per_epoch < 0 or (max_per_epoch is not None and max_per_epoch < min_per_epoch):
            raise ValueError(f"need 0 <= min_per_epoch <= max_per_epoch, got {min_per_epoch!r}, {max_per_epoch!r}")
        self.producer = producer
        self.bank_root = Path(bank_root)
        self.refresh_fraction = float(refresh_fraction)
        self.min_per_epoch = int(min_per_epoch)
        self.max_per_epoch = None if max_per_epoch is None else int(max_per_epoch)
        self.device = device
        self.max_pending = int(max_pending)
        self.all_ranks = bool(all_ranks)
        self.seed = int(seed)
        self.namespace = str(namespace)
        self.wait_on_fit_end_s = float(wait_on_fit_end_s)
        self.max_consecutive_failures = int(max_consecutive_failures)
        self.log_name = str(log_name)
        self._jobs: list[_Job] = []
        self.totals: dict[str, int] = {"launched": 0, "produced": 0, "skipped": 0, "failed": 0, "crashed_jobs": 0}
        """Counts over finished jobs: launched jobs, produced/skipped/failed items, jobs that died."""

    # ------------------------------------------------------------------ helpers
    def _active(self, trainer: L.Trainer) -> bool:
        return self.all_ranks or trainer.global_rank == 0

    def _per_epoch(self, bank_size: int) -> int:
        n = max(self.min_per_epoch, math.ceil(self.refresh_fraction * bank_size))
        return n if self.max_per_epoch is None else min(n, self.max_per_epoch)

    def _drain(self, job: _Job) -> None:
        while True:
            try:
                job.status = job.queue.get_nowait()
            except queue_mod.Empty:
                return
            except (EOFError, OSError):
                return

    def _collect(self) -> None:
        """Account for finished jobs; keep running ones."""
        running: list[_Job] = []
        for job in self._jobs:
            self._drain(job)
            if job.process.is_alive():
                running.append(job)
                continue
            job.process.join()
            self._drain(job)
            self._account(job)
        self._jobs = running

    def _account(self, job: _Job) -> None:
        st = job.status
        for k in ("produced", "skipped", "failed"):
            self.totals[k] += int(st.get(k, 0))
        if st.get("fatal") or job.process.exitcode not in (0, None):
            self.totals["crashed_jobs"] += 1
            log.warning(
                "outlier bank refresh job of epoch %d stopped early (exit code %s): %s; recent errors: %s",
                job.epoch,
                job.process.exitcode,
                st.get("fatal"),
                st.get("errors"),
            )
        elif st.get("failed"):
            log.warning(
                "outlier bank refresh job of epoch %d: %d items failed: %s", job.epoch, st["failed"], st.get("errors")
            )

    def _launch(self, trainer: L.Trainer, epoch: int, n: int) -> None:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        namespace = f"{self.namespace}-r{trainer.global_rank}-e{epoch}"
        # The target lives in sources/fill.py so the child does not import Lightning (seconds per start).
        proc = ctx.Process(
            target=fill_bank,
            args=(self.producer, str(self.bank_root), n, self.seed, namespace),
            kwargs={"device": self.device, "max_consecutive_failures": self.max_consecutive_failures, "report": q.put},
            daemon=True,
            name=f"outlier-bank-refresh-e{epoch}",
        )
        proc.start()
        self._jobs.append(_Job(epoch=epoch, n=n, process=proc, queue=q))
        self.totals["launched"] += 1

    def stop(self, wait_s: float = 0.0) -> None:
        """Wait up to ``wait_s`` for running jobs, then terminate the rest and clean their temp files."""
        deadline = time.monotonic() + max(0.0, wait_s)
        for job in self._jobs:
            # Drain while waiting: a child blocks at exit until its queued reports are read.
            while job.process.is_alive() and time.monotonic() < deadline:
                self._drain(job)
                job.process.join(0.1)
            self._drain(job)
            if job.process.is_alive():
                job.process.terminate()
                job.process.join(10)
                if job.process.is_alive():
                    job.process.kill()
                    job.process.join()
        self._collect()
        if self.bank_root.is_dir():
            OutlierBank(self.bank_root, mode="a").cleanup_temp()

    @property
    def pending(self) -> int:
        """Background jobs still running."""
        return sum(1 for j in self._jobs if j.process.is_alive())

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Launch this epoch's generation unless ``max_pending`` jobs still run."""
        if not self._active(trainer):
            return
        self._collect()
        bank = OutlierBank(self.bank_root, mode="a")
        size = len(bank)
        if len(self._jobs) >= self.max_pending:
            log.info(
                "outlier bank refresh: %d job(s) still running, none launched for epoch %d",
                len(self._jobs),
                trainer.current_epoch,
            )
        else:
            n = self._per_epoch(size)
            if n > 0:
                self._launch(trainer, trainer.current_epoch, n)
        self._log(pl_module, size)

    def progress(self) -> dict[str, int]:
        """Items produced and failed so far, finished jobs and the latest report of running ones together."""
        running = [job.status for job in self._jobs]
        produced = self.totals["produced"] + sum(int(st.get("produced", 0)) for st in running)
        failed = self.totals["failed"] + sum(int(st.get("failed", 0)) for st in running)
        return {"produced": produced, "failed": failed, "crashed_jobs": self.totals["crashed_jobs"]}

    def _log(self, pl_module: L.LightningModule, size: int) -> None:
        now = self.progress()
        counts = [float(now["produced"]), float(now["failed"] + now["crashed_jobs"])]
        trainer = pl_module.trainer
        if self.all_ranks and trainer.world_size > 1:
            # Every process runs its own jobs (and calls this at the same hooks): the run's counts are the sum.
            total = trainer.strategy.reduce(torch.tensor(counts, dtype=torch.float64), reduce_op="sum")
            counts = [float(v) for v in total]
        metrics = {
            f"train/{self.log_name}_size": float(size),
            f"train/{self.log_name}_generated": counts[0],
            f"train/{self.log_name}_failures": counts[1],
        }
        # Logged at epoch start and end; the counts only grow, so the epoch's value is the latest (max).
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True, sync_dist=False, reduce_fx="max")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the bank's size and the counts reached so far (running jobs included)."""
        if not self._active(trainer):
            return
        for job in self._jobs:
            self._drain(job)
        self._log(pl_module, len(OutlierBank(self.bank_root, mode="a")))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Let running jobs finish for up to ``wait_on_fit_end_s``, then stop them."""
        self.stop(self.wait_on_fit_end_s)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Stop background jobs when fitting fails."""
        self.stop(0.0)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Never leave a background process behind."""
        if self._jobs:
            self.stop(0.0)

    @property
    def state_key(self) -> str:
        """Unique per bank and namespace, so several refreshers can share a trainer."""
        return self._generate_state_key(bank_root=str(self.bank_root), namespace=self.namespace)

    def state_dict(self) -> dict[str, Any]:
        """Counters survive a resume (the bank itself is on disk)."""
        return {"totals": dict(self.totals)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counters."""
        self.totals.update(state_dict.get("totals", {}))
