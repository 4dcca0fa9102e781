"""The predict-only LightningModule of generation: the inpainting engine over a batch of work items."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L

from synthrel_lightning.synthesis.engine import InpaintingEngine, InpaintResult
from synthrel_lightning.synthesis.generate.items import WorkItem

__all__ = ["ItemOutcome", "InpaintGenerationModule"]

log = logging.getLogger(__name__)


@dataclass
class ItemOutcome:
    """What became of one work item: a result, or the error that made it fail (None and None: unplaceable)."""

    item: WorkItem
    result: InpaintResult | None = None
    error: str | None = None
    attempts: int = 0


class InpaintGenerationModule(L.LightningModule):
    """Inpaints a batch of work items with an :class:`InpaintingEngine`, surviving per-item exceptions.

    The batch goes through the engine in one call; if that call raises, each item is tried alone, up to
    ``1 + max_item_retries`` times, and an item that still fails becomes an :class:`ItemOutcome` with its
    error (the writer counts and names it) instead of stopping the run.
    """

    def __init__(self, engine: InpaintingEngine, max_item_retries: int = 2) -> None:
        super().__init__()
        if max_item_retries < 0:
            raise ValueError(f"max_item_retries must be >= 0, got {max_item_retries}")
        self.engine = engine
        self.max_item_retries = int(max_item_retries)

    def on_predict_start(self) -> None:
        """Run the engine on this rank's device (Lightning chose it; the pipeline loads there on first use)."""
        if self.device.type != "cpu":
            self.engine.to(self.device)

    def _run(self, items: list[WorkItem]) -> list[InpaintResult]:
        boxes = []
        for it in items:
            if it.box is None:
                raise ValueError(f"generate: item {it.title} has no box to inpaint")
            boxes.append(it.box)
        return self.engine.synthesize_batch(
            [it.image for it in items],
            boxes,
            [it.object for it in items],
            [it.seed for it in items],
            [it.label for it in items],
        )

    def predict_step(self, batch: list[WorkItem], batch_idx: int) -> list[ItemOutcome]:
        """One outcome per item of the batch, in order."""
        outcomes = {it.key: ItemOutcome(it, error=it.error) for it in batch}
        todo = [it for it in batch if it.error is None and it.box is not None]
        if not todo:
            return list(outcomes.values())
        try:
            for it, res in zip(todo, self._run(todo)):
                outcomes[it.key].result, outcomes[it.key].attempts = res, 1
            return list(outcomes.values())
        except Exception as e:  # noqa: BLE001 - retried item by item below
            log.warning(
                "generate: a batch of %d items failed (%s: %s); retrying item by item", len(todo), type(e).__name__, e
            )
        for it in todo:
            out = outcomes[it.key]
            for attempt in range(1, self.max_item_retries + 2):
                out.attempts = attempt
                try:
                    out.result, out.error = self._run([it])[0], None
                    break
                except Exception as e:  # noqa: BLE001 - one bad item must not stop the others
                    out.error = f"{type(e).__name__}: {e}"
                    log.warning("generate: item %s failed (attempt %d): %s", it.title, attempt, out.error)
        return list(outcomes.values())
