"""Checkpoint calibration: fit T on a named evaluation set and write a calibrated copy of the checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.calibration.logits import collect_logits
from synthrel_lightning.calibration.temperature import PAPER_GRID, FitMethod, TemperatureFit, fit_temperature
from synthrel_lightning.checkpoints import CheckpointError, load_checkpoint
from synthrel_lightning.data.named_sets import datamodule_loader
from synthrel_lightning.devices import resolve_device

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate` did: the fit, the set it used, and the checkpoint it read and wrote."""

    fit: TemperatureFit
    set_name: str | None
    source: Path
    output: Path

    def summary(self) -> str:
        """A few human-readable lines: T, ECE before/after, pixels used, where the checkpoint went."""
        fit = self.fit
        sampled = "" if fit.fit_pixels == fit.pixels else f" (a uniform subsample of {fit.pixels:,} labelled pixels)"
        where = self.set_name or "the only validation set"
        return "\n".join(
            [
                f"temperature: {fit.temperature:.6g} ({fit.method}) on set {where}",
                f"ECE ({fit.num_bins} bins): {fit.ece_before:.4f} before -> {fit.ece_after:.4f} after",
                f"pixels used: {fit.fit_pixels:,}{sampled}",
                f"calibrated checkpoint: {self.output}",
            ]
        )


def _progress(loader: Any, total: int | None, description: str, enabled: bool) -> Any:
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    if total is None:
        try:
            total = len(loader)
        except TypeError:
            total = None
    return tqdm(loader, total=total, desc=description, unit="batch", leave=False)


def calibrate(
    model: L.LightningModule,
    data: L.LightningDataModule,
    ckpt_path: str | Path,
    set_name: str | None = None,
    output: str | Path | None = None,
    method: FitMethod = "nll",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
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
        method, grid, num_bins, max_pixels, seed: see :func:`~synthrel_lightning.calibration.fit_temperature`.
        max_batches: fit on at most this many batches of the set.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...
        trust_checkpoint: load a checkpoint that pickles arbitrary objects (only from a trusted
            origin: loading it can run code); plain Lightning checkpoints do not need it.
        progress: show a progress bar while collecting logits.

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
    model.to(resolve_device(device, who="calibrate"))
    data.prepare_data()
    data.setup("validate")
    loader = datamodule_loader(data, set_name, who="calibrate")
    batches = _progress(loader, max_batches, f"collecting logits ({set_name or 'validation set'})", progress)
    fit = fit_temperature(
        collect_logits(model, batches, max_batches=max_batches),
        method=method,
        grid=grid,
        num_bins=num_bins,
        max_pixels=max_pixels,
        seed=seed,
    )
    state["temperature"] = torch.full_like(state["temperature"], fit.temperature)
    checkpoint["calibration"] = {**fit.as_dict(), "set_name": set_name, "source_checkpoint": str(ckpt_path)}
    atomic_write(out, lambda tmp: torch.save(checkpoint, tmp))
    log.info("calibrate: T=%.4f fitted on %r (%s); saved %s", fit.temperature, set_name, method, out)
    return CalibrationReport(fit=fit, set_name=set_name, source=ckpt_path, output=out)


__all__ = ["CalibrationReport", "calibrate"]
