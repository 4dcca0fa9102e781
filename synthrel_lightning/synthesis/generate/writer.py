"""The writer of the generation predict loop: commits results to the outlier bank and the evaluation set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_save_png, atomic_write_json
from synthrel_lightning.labels import semantic_to_ood_target
from synthrel_lightning.predict_loop import BatchPredictionWriter
from synthrel_lightning.qc.presence import object_sidecar
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.generate.items import WriteKind, bank_keys
from synthrel_lightning.synthesis.names import path_within

__all__ = ["BankWriter", "GenerationStopped", "eval_paths"]

log = logging.getLogger(__name__)


class GenerationStopped(Exception):
    """Raised after a batch is written when a stop was requested (SIGTERM/SIGINT): ends the predict loop cleanly."""


def eval_paths(eval_dir: str | Path, key: str) -> tuple[Path, Path, Path]:
    """(image, train-id label, OOD mask) PNG paths of item ``key`` in an evaluation set folder."""
    return (
        path_within(eval_dir, "images", f"{key}.png", what="evaluation file"),
        path_within(eval_dir, "labels", f"{key}_labelTrainIds.png", what="evaluation file"),
        path_within(eval_dir, "labels", f"{key}_ood.png", what="evaluation file"),
    )


class BankWriter(BatchPredictionWriter):
    """Commits accepted results to the outlier bank (objects and/or whole frames) and, optionally, evaluation PNGs.

    ``eval_dir`` receives ``images/<key>.png``, ``labels/<key>_labelTrainIds.png`` (train ids, OOD 254)
    ``labels/<key>_ood.png`` (0 in, 1 OOD, 255 void) and ``labels/<key>_object.json`` (the object's name,
    which ``qc`` re-detects) for synthetic evaluation sets. The bank entries
    are written first and the PNGs after; an item counts as complete only when all exist, so a run
    killed between the two redoes the item. ``should_stop`` (polled after each batch) ends the loop
    with :class:`GenerationStopped` once the batch is written.
    """

    def __init__(
        self, bank_root: str, write: WriteKind = "object", eval_dir: str | None = None, should_stop: Any = None
    ) -> None:
        super().__init__()
        if write not in ("object", "frame", "both"):
            raise ValueError(f"write must be 'object', 'frame' or 'both', got {write!r}")
        self.bank_root = bank_root
        self.write = write
        self.eval_dir = Path(eval_dir) if eval_dir else None
        self.should_stop = should_stop
        self.counts: dict[str, int] = {"done": 0, "rejected": 0, "failed": 0, "unplaceable": 0}
        self.failed_items: list[str] = []
        self._bank: OutlierBank | None = None

    @property
    def bank(self) -> OutlierBank:
        """The bank, opened for appending."""
        if self._bank is None:
            self._bank = OutlierBank(self.bank_root, mode="a")
        return self._bank

    def _fail(self, title: str, reason: str) -> None:
        self.counts["failed"] += 1
        self.failed_items.append(f"{title}: {reason}")

    def _commit(self, item: Any, result: Any) -> None:
        result.metadata.update(frame=item.name, slot=item.slot)
        for key in bank_keys(item.key, self.write):
            kind = "frame" if key.endswith("-frame") else "object"
            self.bank.add(result.to_entry(kind, base_label=item.label), key=key)
        if self.eval_dir is not None:
            label = result.label_map(item.label)
            image_path, label_path, ood_path = eval_paths(self.eval_dir, item.key)
            # The object's name beside the label: QC re-detects the object by it.
            atomic_write_json(object_sidecar(label_path), {"object": item.object.name, "ood": item.object.is_ood})
            atomic_save_png(image_path, result.image)
            atomic_save_png(label_path, label)
            atomic_save_png(ood_path, semantic_to_ood_target(label))

    def write_batch(self, prediction: Any, batch_idx: int) -> None:
        """Write every accepted result of the batch; count (and name) the others; stop if asked to."""
        for outcome in prediction:
            item, result = outcome.item, outcome.result
            if outcome.error is not None:
                self._fail(item.title, outcome.error)
            elif result is None:
                self.counts["unplaceable"] += 1
            elif not result.ok:
                if result.reason.startswith("inpainting"):
                    self._fail(item.title, result.reason)
                else:
                    self.counts["rejected"] += 1
            else:
                try:
                    self._commit(item, result)
                    self.counts["done"] += 1
                except Exception as e:  # noqa: BLE001 - a write error fails the item; it is redone next run
                    log.warning("generate: writing item %s failed: %s", item.title, e)
                    self._fail(item.title, f"write failed: {type(e).__name__}: {e}")
        if self.should_stop is not None and self.should_stop():
            raise GenerationStopped(f"stopped after batch {batch_idx} on request")
