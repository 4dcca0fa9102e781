"""Writes a readable summary of the final metrics (JSON + Markdown) into the run's folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from synthrel_lightning.atomic import atomic_write_text
from synthrel_lightning.runs import run_dir

MIOU_CONVENTION = (
    "miou is the mean IoU over the classes present in the set (in its labels or predictions); "
    "classes absent from both are left out of the mean, not counted as 0 (per-class values: iou_<class> in the JSON)."
)
"""How ``miou`` is averaged, stated in every summary."""


def _group(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"<stage>/<set>": {metric: value}}`` from flat ``stage/set/metric`` keys."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in sorted(metrics.items()):
        head, _, metric = key.rpartition("/")
        grouped.setdefault(head or "(global)", {})[metric] = value
    return grouped


class MetricsSummary(Callback):
    """At the end of fit/validate/test, writes ``<run folder>/metrics_summary.{json,md}`` and prints the table.

    The run folder is :func:`synthrel_lightning.runs.run_dir` (the logger's per-run folder), so
    runs sharing a ``save_dir`` keep their own summaries. Per-class IoU entries (``iou_*``) are
    kept in the JSON and left out of the table; the summary states the mIoU convention
    (:data:`MIOU_CONVENTION`). A datamodule exposing ``skipped_counts() -> dict[str, int]``
    (frames left out of each named set by ``on_error="skip"``) has its counts reported under
    ``skipped_frames``. ``epoch`` is the epoch the metrics come from, counted from 0 as Lightning
    names checkpoints (``epoch=1-...ckpt`` after two epochs); ``epochs_completed`` counts them.
    """

    def __init__(self, filename: str = "metrics_summary", print_table: bool = True) -> None:
        self.filename = filename
        self.print_table = print_table
        self._val_epoch: int | None = None

    def _directory(self, trainer: L.Trainer) -> Path:
        return run_dir(trainer)

    @staticmethod
    def _skipped(trainer: L.Trainer) -> dict[str, int] | None:
        counts = getattr(getattr(trainer, "datamodule", None), "skipped_counts", None)
        return {str(k): int(v) for k, v in counts().items()} if callable(counts) else None

    def _epochs(self, trainer: L.Trainer, stage: str) -> tuple[int, int | None]:
        """``(epoch, epochs completed)``: the epoch the metrics come from, counted from 0 as checkpoint names count.

        Known after ``fit`` only (a stand-alone validate/test reports the trainer's epoch, completed unknown).
        """
        if stage != "fit":
            return int(trainer.current_epoch), None
        # After fit, current_epoch is the number of epochs run (the index of the next one).
        done = int(trainer.current_epoch)
        last = self._val_epoch if self._val_epoch is not None else done - 1
        return max(last, 0), done

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the epoch of the latest validation during fit (the summary's metrics come from it)."""
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._val_epoch = int(trainer.current_epoch)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, stage: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        grouped = _group(metrics)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
        epoch, done = self._epochs(trainer, stage)
        payload: dict[str, Any] = {
            "stage": stage,
            "epoch": epoch,
            "epochs_completed": done,
            "global_step": trainer.global_step,
            "best_checkpoint": best,
            "metrics": grouped,
            "miou_convention": MIOU_CONVENTION,
        }
        skipped = self._skipped(trainer)
        if skipped is not None:
            payload["skipped_frames"] = skipped
        directory = self._directory(trainer)
        atomic_write_text(directory / f"{self.filename}.json", json.dumps(payload, indent=2, sort_keys=True))
        span = f"epoch {epoch} of 0..{done - 1}" if done else f"epoch {epoch}"
        lines = [f"# Metrics after {stage} ({span}, step {trainer.global_step})", ""]
        if best:
            lines += [f"Best checkpoint: `{best}`", ""]
        for head, values in grouped.items():
            shown = {k: v for k, v in values.items() if not k.startswith("iou_")}
            if not shown:
                continue
            lines += [f"## {head}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {'nan' if math.isnan(v) else f'{v:.4f}'} |" for k, v in shown.items()]
            lines.append("")
        if any(k == "miou" for values in grouped.values() for k in values):
            lines += [f"Note: {MIOU_CONVENTION}", ""]
        if skipped is not None:
            shown_skips = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
            lines += [f"Frames skipped (on_error=skip): {shown_skips}", ""]
        text = "\n".join(lines)
        atomic_write_text(directory / f"{self.filename}.md", text)
        if self.print_table:
            print(f"\n{text}\nSummary written to {directory / (self.filename + '.md')}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarise the last validation and training metrics."""
        self._write(trainer, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarise a stand-alone ``validate`` run."""
        if trainer.state.fn == "validate":
            self._write(trainer, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Summarise a ``test`` run."""
        self._write(trainer, "test")
