"""Sample renders during ControlNet fine-tuning: label map | generated frame in each domain, logged every N steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.atomic import atomic_save_png
from synthrel_lightning.generators.encodings import ENCODINGS

__all__ = ["ControlNetSampleLogger", "sample_grid"]

log = logging.getLogger(__name__)


def sample_grid(label_ids: Sequence[np.ndarray], rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """One row per frame: its label map in Cityscapes colours, then the generated frames; uint8 (H*n, W*(1+k), 3)."""
    palette = ENCODINGS["cityscapes_palette"]
    lines = []
    for ids, frames in zip(label_ids, rows):
        colour = (np.moveaxis(palette.encode(ids), 0, -1) * 255).round().astype(np.uint8)
        lines.append(np.concatenate([colour, *frames], axis=1))
    return np.concatenate(lines, axis=0)


class ControlNetSampleLogger(Callback):
    """Every ``every_n_steps`` optimizer steps, renders the first ``num_frames`` validation label maps in ``domains``.

    The grid (label map | one frame per domain, a row per frame) goes to the logger
    (``log_image`` of W&B, ``add_image`` of TensorBoard) and to
    ``<log dir>/controlnet_samples/step_<N>.png``.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        domains: Sequence[str] = ("fog", "night", "rain", "snow"),
        num_frames: int = 2,
        num_inference_steps: int = 25,
        guidance_scale: float = 8.0,
        seed: int = 0,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.domains, self.num_frames = int(every_n_steps), list(domains), int(num_frames)
        self.num_inference_steps, self.guidance_scale, self.seed = int(num_inference_steps), guidance_scale, seed
        self._last = -1
        self.saved: list[Path] = []

    def _frames(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        dm = getattr(trainer, "datamodule", None)  # set by the Trainer at run time, not declared on its class
        pairs = getattr(dm, "val_set", None) or getattr(dm, "train_set", None)
        if pairs is None:
            return []
        return [pairs[i] for i in range(min(self.num_frames, len(pairs)))]

    def render(self, trainer: L.Trainer, pl_module: Any) -> np.ndarray | None:
        """The grid at the current weights (None without validation frames)."""
        from synthrel_lightning.generators.domains import DomainShiftGenerator

        frames = self._frames(trainer)
        if not frames:
            return None
        gen = DomainShiftGenerator(
            pipeline=pl_module.pipeline(),
            encoding=pl_module.encoding.name,
            domains=self.domains,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            device=str(pl_module.device),
            dtype="float32",
            batch_size=len(self.domains),
        )
        dtype = pl_module.unet.dtype
        autocast = torch.autocast(pl_module.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
        was_training = pl_module.controlnet.training
        pl_module.controlnet.eval()
        rows = []
        try:
            with autocast:
                for f in frames:
                    ids = f["label_ids"].numpy().astype(np.uint8)
                    out = gen.generate(
                        [ids] * len(self.domains), self.domains, [self.seed] * len(self.domains),
                        [f["caption"]] * len(self.domains), ids="label_ids",
                    )  # fmt: skip
                    rows.append([s.image for s in out])
        finally:
            pl_module.controlnet.train(was_training)
        return sample_grid([f["label_ids"].numpy().astype(np.uint8) for f in frames], rows)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Render and log when the optimizer step count reaches a multiple of ``every_n_steps``."""
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last or not trainer.is_global_zero:
            return
        self._last = step
        grid = self.render(trainer, pl_module)
        if grid is None:
            return
        root = Path(trainer.log_dir or trainer.default_root_dir)
        path = atomic_save_png(root / "controlnet_samples" / f"step_{step:06d}.png", grid)
        self.saved.append(path)
        caption = "label map | " + " | ".join(self.domains)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="controlnet/samples", images=[grid], step=step, caption=[caption])
            else:
                experiment = getattr(logger, "experiment", None)
                if experiment is not None and hasattr(experiment, "add_image"):
                    experiment.add_image("controlnet/samples", grid, step, dataformats="HWC")
