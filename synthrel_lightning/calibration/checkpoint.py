"""Checkpoint calibration: fit T on a named evaluation set and write a calibrated copy of the checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.calibration.logits import LogitStream
from synthrel_lightning.calibration.sampling import DEFAULT_PIXELS_PER_IMAGE, PixelsPerImage
from synthrel_lightning.calibration.temperature import PAPER_GRID, FitMethod, TemperatureFit, fit_temperature
from synthrel_lightning.checkpoints import CheckpointError, load_checkpoint
from synthrel_lightning.data.named_sets import datamodule_loader
from synthrel_lightning.devices import resolve_device

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate` did: the fit, the set it used, the checkpoint it read and wrote, where and how long."""

    fit: TemperatureFit
    set_name: str | None
    source: Path
    output: Path
    device: str = "cpu"
    seconds: float = 0.0
    """Wall time of the logit pass and the fit."""

    def summary(self) -> str:
        """A few human-readable lines: T, ECE before/after, pixels used, where the checkpoint went."""
        fit = self.fit
        where = self.set_name or "the only validation set"
        if fit.pixels_per_image == "all":
            used = f"{fit.sampled_pixels:,} (every labelled pixel of {fit.frames:,} frames)"
        else:
            used = (
                f"{fit.sampled_pixels:,} of {fit.pixels:,} labelled (at most {fit.pixels_per_image:,} "
                f"per frame, {fit.frames:,} frames)"
            )
        if fit.fit_pixels < fit.sampled_pixels:
            used = f"{fit.fit_pixels:,}, a uniform subsample of {used}"
        lines = [
            f"temperature: {fit.temperature:.6g} ({fit.method}) on set {where}",
            f"ECE ({fit.num_bins} bins): {fit.ece_before:.4f} before -> {fit.ece_after:.4f} after",
            f"pixels used: {used}",
        ]
        lines += [f"grid: {note}" for note in fit.grid_notes]
        if fit.on_grid_edge:
            lines.append("warning: T is on the edge of the temperatures searched, not a minimum of the ECE")
        lines += [f"time: {self.seconds:.1f} s on {self.device}", f"calibrated checkpoint: {self.output}"]
        return "\n".join(lines)


def _frame_count(loader: Any, max_batches: int | None) -> int | None:
    """Frames the loader yields (within ``max_batches``), when its dataset has a length."""
    try:
        frames = len(loader.dataset)
    except (AttributeError, TypeError):
        return None
    batch_size = getattr(loader, "batch_size", None)
    if max_batches is not None and batch_size:
        frames = min(frames, max_batches * batch_size)
    return frames


class _WithProgress:
    """The batches of ``stream`` (each pass), advancing a progress bar by the frames of each (logits, label) batch."""

    def __init__(self, stream: Iterable[tuple[Tensor, Tensor]], total: int | None, description: str) -> None:
        self.stream, self.total, self.description = stream, total, description

    def __iter__(self) -> Iterator[Any]:
        from tqdm.auto import tqdm

        with tqdm(total=self.total, desc=self.description, unit="frame", leave=False) as bar:
            for logits, labels in self.stream:
                yield logits, labels
                bar.update(labels.shape[0] if labels.ndim == 3 else 1)


def calibrate(
    model: L.LightningModule,
    data: L.LightningDataModule,
    ckpt_path: str | Path,
    set_name: str | None = None,
    output: str | Path | None = None,
    method: FitMethod = "nll",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    max_pixels: int = 2_000_000,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    trust_checkpoint: bool = False,
    progress: bool = True,
) -> CalibrationReport:
    """Fit T on a named validation set for a checkpoint and save a copy of it with T set.

    Args:
        model: built from the same configuration as at training time (its weights come
            from ``ckpt_path``); it must have a scalar buffer ``temperature``.
        data: the datamodule whose validation set ``set_name`` T is fitted on.
        ckpt_path: the Lightning checkpoint to calibrate (read only, never modified).
        set_name: the validation set (the datamodule's ``val_set_names``); ``None`` when there is one.
        output: where to write the calibrated checkpoint (default ``<stem>-calibrated.ckpt`` beside it).
        method, grid, num_bins, pixels_per_image, max_pixels, seed: see
            :func:`~synthrel_lightning.calibration.fit_temperature` (``pixels_per_image``: labelled
            pixels drawn per frame, seeded by ``(seed, frame index)``, default 20,000; ``"all"``).
        max_batches: fit on at most this many batches of the set.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...: the model's forward
            pass and the fit (the ECE grid runs where the logits are).
        trust_checkpoint: load a checkpoint that pickles arbitrary objects (only from a trusted
            origin: loading it can run code); plain Lightning checkpoints do not need it.
        progress: show a progress bar over the frames while collecting logits and fitting.

    The output is the input checkpoint, optimizer and loop states included, with
    ``state_dict["temperature"] = T`` and a ``calibration`` entry of plain values recording
    the fit; it is written atomically and loads back with ``torch.load(weights_only=True)``.
    """
    ckpt_path = Path(ckpt_path)
    out = Path(output) if output is not None else ckpt_path.with_name(f"{ckpt_path.stem}-calibrated.ckpt")
    if out.resolve() == ckpt_path.resolve():
        raise ValueError(f"calibrate: output {out} is the input checkpoint; choose another path")
    checkpoint = load_checkpoint(ckpt_path, map_location="cpu", trusted=trust_checkpoint, who="calibrate")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"calibrate: {ckpt_path} is not a Lightning checkpoint (no 'state_dict' entry)")
    if "temperature" not in state:
        raise CheckpointError(
            f"calibrate: {ckpt_path} has no 'temperature' buffer in its state_dict; the model must register "
            "a scalar buffer named 'temperature' (OODSegmenter does)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"calibrate: {ckpt_path} does not match the configured model: {err}") from err
    target = resolve_device(device, who="calibrate")
    model.to(target)
    data.prepare_data()
    data.setup("validate")
    loader = datamodule_loader(data, set_name, who="calibrate")
    start = time.perf_counter()
    batches: Iterable[tuple[Tensor, Tensor]] = LogitStream(model, loader, max_batches=max_batches)
    if progress:
        total = _frame_count(loader, max_batches)
        batches = _WithProgress(batches, total, f"collecting logits ({set_name or 'validation set'}), fitting T")
    fit = fit_temperature(
        batches,
        method=method,
        grid=grid,
        num_bins=num_bins,
        pixels_per_image=pixels_per_image,
        max_pixels=max_pixels,
        seed=seed,
    )
    seconds = time.perf_counter() - start
    state["temperature"] = torch.full_like(state["temperature"], fit.temperature)
    checkpoint["calibration"] = {**fit.as_dict(), "set_name": set_name, "source_checkpoint": str(ckpt_path)}
    atomic_write(out, lambda tmp: torch.save(checkpoint, tmp))
    log.info("calibrate: T=%.4f fitted on %r (%s); saved %s", fit.temperature, set_name, method, out)
    return CalibrationReport(
        fit=fit, set_name=set_name, source=ckpt_path, output=out, device=str(target), seconds=seconds
    )


__all__ = ["CalibrationReport", "calibrate"]
