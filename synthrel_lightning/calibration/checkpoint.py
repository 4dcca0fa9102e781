"""Checkpoint calibration: fit T on a named evaluation set and write a calibrated copy of the checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.calibration.calibrator import (
    CALIBRATION_METHODS,
    Calibrator,
    ClusteredCalibrator,
    GlobalCalibrator,
    LocalCalibrator,
    calibrator_from_state,
)
from synthrel_lightning.calibration.clustered import RELIS_SEED, Assignment, fit_clustered_temperature
from synthrel_lightning.calibration.features import FeatureTap, collect_calibration_inputs
from synthrel_lightning.calibration.local import fit_local_temperature
from synthrel_lightning.calibration.logits import LogitStream
from synthrel_lightning.calibration.sampling import DEFAULT_PIXELS_PER_IMAGE, PixelsPerImage
from synthrel_lightning.calibration.temperature import PAPER_GRID, TemperatureFit, fit_temperature
from synthrel_lightning.checkpoints import CheckpointError, load_checkpoint
from synthrel_lightning.data.named_sets import datamodule_loader
from synthrel_lightning.devices import resolve_device

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

CalibrationMethod = Literal["nll", "ece_grid", "clustered", "lts"]
"""``calibrate``'s methods: global T by NLL or ECE grid, per-cluster T, per-pixel T (LTS)."""


@dataclass(frozen=True)
class CalibrationReport:
    """What :func:`calibrate` did: the fit, the set it used, the checkpoint it read and wrote, where and how long."""

    fit: TemperatureFit | None
    """The global fit (``nll``, ``ece_grid``); ``None`` for ``clustered`` and ``lts`` (see ``lines``)."""
    set_name: str | None
    source: Path
    output: Path
    device: str = "cpu"
    seconds: float = 0.0
    """Wall time of the logit pass and the fit."""
    lines: tuple[str, ...] = ()
    """What a ``clustered`` or ``lts`` fit found, in words."""

    def summary(self) -> str:
        """A few human-readable lines: T, ECE before/after, pixels used, where the checkpoint went."""
        fit = self.fit
        if fit is None:
            tail = [f"time: {self.seconds:.1f} s on {self.device}", f"calibrated checkpoint: {self.output}"]
            return "\n".join([*self.lines, *tail])
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
    method: CalibrationMethod = "nll",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    max_pixels: int = 2_000_000,
    max_batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    trust_checkpoint: bool = False,
    progress: bool = True,
    extend_grid: bool = True,
    n_clusters: int = 4,
    cluster_seed: int = RELIS_SEED,
    assignment: Assignment = "hard",
    feature_module: str | None = None,
    lts_epochs: int = 10,
    lts_lr: float = 1e-4,
    lts_batch_size: int = 4,
    lts_val_fraction: float = 0.2,
    lts_max_images: int = 500,
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
        method: ``"nll"`` or ``"ece_grid"`` (one global T), ``"clustered"`` (one T per k-means
            cluster of images, relis' compute_clusters_temp_scaling: :mod:`~synthrel_lightning.calibration.clustered`)
            or ``"lts"`` (local temperature scaling, a per-pixel T network trained as relis'
            train_lts_network: :mod:`~synthrel_lightning.calibration.local`).
        extend_grid: ECE grid searches (``ece_grid``, each cluster's) go beyond an edge of ``grid``
            their best T lies on, and the report says so.
        n_clusters, cluster_seed, assignment, feature_module: ``clustered`` (relis: 4 clusters,
            seed 111, hard assignment; ``feature_module``: the backbone whose deepest map gives the
            image features, found automatically for the segmenters of this package).
        lts_epochs, lts_lr, lts_batch_size, lts_val_fraction, lts_max_images: ``lts`` training
            (relis: 10, 1e-4, 4, 0.2, 500).

    The output is the input checkpoint, optimizer and loop states included, with
    ``state_dict["temperature"] = T`` (global methods; 1 otherwise) and a ``calibration`` entry of
    tensors and plain values recording the fit and what applying it needs (``kind`` global,
    clustered with centres and per-cluster T, or lts with the network's weights:
    :func:`load_calibrator`); it is written atomically and loads back with
    ``torch.load(weights_only=True)``.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate: unknown method {method!r}; valid methods: {', '.join(CALIBRATION_METHODS)}")
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
    if method in ("clustered", "lts"):
        with torch.inference_mode(False):
            entry, lines = fit_spatial_calibration(
                model, loader, method, max_batches, grid=grid, num_bins=num_bins, pixels_per_image=pixels_per_image,
                seed=seed, extend_grid=extend_grid, n_clusters=n_clusters, cluster_seed=cluster_seed,
                assignment=assignment, feature_module=feature_module, lts_epochs=lts_epochs, lts_lr=lts_lr,
                lts_batch_size=lts_batch_size, lts_val_fraction=lts_val_fraction, lts_max_images=lts_max_images,
            )  # fmt: skip
        seconds = time.perf_counter() - start
        checkpoint["calibration"] = {**entry, "set_name": set_name, "source_checkpoint": str(ckpt_path)}
        atomic_write(out, lambda tmp: torch.save(checkpoint, tmp))
        log.info("calibrate: %s fitted on %r; saved %s", method, set_name, out)
        where = set_name or "the only validation set"
        return CalibrationReport(
            fit=None, set_name=set_name, source=ckpt_path, output=out, device=str(target), seconds=seconds,
            lines=(f"method: {method} on set {where}", *lines),
        )  # fmt: skip
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
        extend_grid=extend_grid,
    )
    seconds = time.perf_counter() - start
    state["temperature"] = torch.full_like(state["temperature"], fit.temperature)
    checkpoint["calibration"] = {
        "kind": "global",
        **fit.as_dict(),
        "set_name": set_name,
        "source_checkpoint": str(ckpt_path),
    }
    atomic_write(out, lambda tmp: torch.save(checkpoint, tmp))
    log.info("calibrate: T=%.4f fitted on %r (%s); saved %s", fit.temperature, set_name, method, out)
    return CalibrationReport(
        fit=fit, set_name=set_name, source=ckpt_path, output=out, device=str(target), seconds=seconds
    )


def _frames(batches: Iterable[tuple[Tensor, Tensor, Tensor, Tensor | None]]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Single frames ``(logits (1,K,H,W), labels (1,H,W), image (1,3,h,w))`` of batches."""
    for logits, labels, images, _ in batches:
        for i in range(logits.shape[0]):
            yield logits[i : i + 1], labels[i : i + 1], images[i : i + 1]


class _FrameStream:
    """Every pass runs the model over the loader again and yields single frames."""

    def __init__(self, model: Any, loader: Any, max_batches: int | None) -> None:
        self.model, self.loader, self.max_batches = model, loader, max_batches

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        return _frames(collect_calibration_inputs(self.model, self.loader, max_batches=self.max_batches,
                                                  with_features=False))  # fmt: skip


def fit_spatial_calibration(
    model: Any, loader: Any, method: str, max_batches: int | None, **kw: Any
) -> tuple[dict, list[str]]:
    """Fit a clustered or local calibrator; its checkpoint entry and report lines."""
    if method == "clustered":
        stream = collect_calibration_inputs(model, loader, kw["feature_module"], max_batches)
        cfit = fit_clustered_temperature(
            ((feats, logits, labels) for logits, labels, _, feats in stream),
            n_clusters=kw["n_clusters"], seed=kw["cluster_seed"], assignment=kw["assignment"], grid=kw["grid"],
            num_bins=kw["num_bins"], pixels_per_image=kw["pixels_per_image"], pixel_seed=kw["seed"],
            extend_grid=kw["extend_grid"], feature_module=FeatureTap(model, kw["feature_module"]).name,
        )  # fmt: skip
        temps = ", ".join(f"{t:.4g}" for t in cfit.calibrator.temperatures.tolist())
        lines = [
            f"clusters: {len(cfit.sizes)} (images per cluster {list(cfit.sizes)}), temperatures: {temps}",
            f"ECE ({kw['num_bins']} bins): {cfit.ece_before:.4f} before -> {cfit.ece_after:.4f} after "
            f"({cfit.frames:,} frames, {kw['assignment']} assignment)",
            *(f"grid: {note}" for note in cfit.grid_notes),
        ]
        entry = {
            **ClusteredCalibrator(cfit.calibrator).state(), "method": "clustered", "sizes": list(cfit.sizes),
            "ece_before": cfit.ece_before, "ece_after": cfit.ece_after, "grid_notes": list(cfit.grid_notes),
            "fits": [f.as_dict() for f in cfit.fits],
        }  # fmt: skip
        return entry, lines
    frames = _frame_count(loader, max_batches)
    if frames is None:
        raise ValueError("calibrate: method 'lts' needs a validation set of known length (a sized dataset)")
    stream = _FrameStream(model, loader, max_batches)
    num_classes = next(iter(stream))[0].shape[1]
    lfit = fit_local_temperature(
        stream, frames, num_classes, epochs=kw["lts_epochs"], lr=kw["lts_lr"], batch_size=kw["lts_batch_size"],
        val_fraction=kw["lts_val_fraction"], max_images=kw["lts_max_images"], seed=kw["seed"],
    )  # fmt: skip
    lines = [
        f"validation NLL: {lfit.initial_nll:.4f} before -> {lfit.best_nll:.4f} after "
        f"({lfit.train_images} training, {lfit.val_images} validation images; {lfit.steps} steps"
        f"{', stopped early' if lfit.stopped_early else ''})",
    ]
    entry = {
        **LocalCalibrator(lfit.network).state(), "method": "lts", "initial_nll": lfit.initial_nll,
        "best_nll": lfit.best_nll, "steps": lfit.steps, "stopped_early": lfit.stopped_early,
    }  # fmt: skip
    return entry, lines


def load_calibrator(ckpt_path: str | Path, trusted: bool = False) -> Calibrator:
    """The calibrator a checkpoint written by :func:`calibrate` carries (a global T for other checkpoints).

    ``calibrator(model, images)`` gives calibrated class scores for a model built from the same configuration.
    """
    checkpoint = load_checkpoint(Path(ckpt_path), map_location="cpu", trusted=trusted, who="load_calibrator")
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"load_calibrator: {ckpt_path} is not a Lightning checkpoint")
    entry = checkpoint.get("calibration")
    if isinstance(entry, dict) and entry.get("kind") in ("clustered", "lts"):
        return calibrator_from_state(entry, where=str(ckpt_path))
    state = checkpoint.get("state_dict") or {}
    if "temperature" not in state:
        raise CheckpointError(f"load_calibrator: {ckpt_path} holds no calibration and no 'temperature' buffer")
    return GlobalCalibrator(float(state["temperature"]))


__all__ = ["CalibrationMethod", "CalibrationReport", "calibrate", "fit_spatial_calibration", "load_calibrator"]
