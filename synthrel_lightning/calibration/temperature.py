"""Post-hoc temperature scaling: fit one global temperature T on held-out (e.g. synthetic) logits.

Two fitting rules, both streaming over batches of ``(logits, target)``, on a seeded
per-frame sample of labelled pixels (:mod:`~synthrel_lightning.calibration.sampling`;
20,000 per frame by default, as the authors' code, or ``"all"``):

- ``"ece_grid"`` (the protocol of Loiseau et al., "Reliability in Semantic Segmentation:
  Can We Use Synthetic Data?", ECCV 2024; https://github.com/valeoai/GenVal): T on the grid
  ``[0.5, 10)`` step ``0.01`` minimising the top-1 ECE with 15 equal-width bins. Every
  sampled pixel is used; one pass accumulates, for every T of the grid and every bin, the
  pixel count, the summed confidence and the summed accuracy
  (:func:`~synthrel_lightning.calibration.grid.grid_bin_sums`); no pixel is stored. While the
  best T lies on an edge of the temperatures searched, the search goes beyond it and the fit
  says so (:mod:`~synthrel_lightning.calibration.grid_search`).
- ``"nll"``: T minimising the mean negative log-likelihood (LBFGS on ``log T``), on a
  uniform random subsample of at most ``max_pixels`` of the sampled pixels kept while
  streaming (random keys, smallest ``max_pixels`` kept), so memory does not grow with the set.

Pixels whose target is a train id ``0..K-1`` count; OOD (254) and void (255) pixels have
no correct class and are left out. The ECE arithmetic is :mod:`synthrel_lightning.metrics.functional`'s.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.calibration.grid import grid_bin_sums
from synthrel_lightning.calibration.grid_search import is_replayable, search_grid
from synthrel_lightning.calibration.logits import LogitBatches, PixelReservoir, as_batches
from synthrel_lightning.calibration.sampling import DEFAULT_PIXELS_PER_IMAGE, PixelsPerImage, frame_pixels
from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.metrics.functional import ece_from_sums

log = logging.getLogger(__name__)

FitMethod = Literal["nll", "ece_grid"]
"""How T is fitted: NLL by LBFGS on a pixel subsample, or the paper's ECE grid search."""

PAPER_GRID: tuple[float, float, float] = (0.5, 10.0, 0.01)
"""The authors' temperature grid: start, stop (excluded), step."""


def temperature_grid(grid: tuple[float, float, float] = PAPER_GRID) -> Tensor:
    """The temperatures ``start, start+step, ...`` below ``stop`` (float64)."""
    start, stop, step = (float(v) for v in grid)
    if not (start > 0 and stop > start and step > 0):
        raise ValueError(f"temperature grid must be (start > 0, stop > start, step > 0), got {grid!r}")
    n = math.ceil((stop - start) / step - 1e-9)
    return start + step * torch.arange(n, dtype=torch.float64)


class _BinnedTop1:
    """Per-(temperature, bin) sums of count, confidence and correctness for top-1 ECE, over streamed frames."""

    def __init__(self, temperatures: Tensor, num_bins: int) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins!r}")
        self.temperatures = temperatures.double().reshape(-1)
        if not bool((self.temperatures > 0).all()):
            raise ValueError(f"temperatures must be > 0, got {self.temperatures.tolist()[:10]}")
        self.num_bins = int(num_bins)
        self.sums = torch.zeros(self.temperatures.numel(), 3, self.num_bins, dtype=torch.float64)
        self.pixels = 0

    def update(self, z: Tensor, y: Tensor) -> None:
        if z.shape[0] == 0:
            return
        self.sums = self.sums.to(z.device)
        self.sums += grid_bin_sums(z, y, self.temperatures, self.num_bins)
        self.pixels += z.shape[0]

    def ece(self) -> Tensor:
        return ece_from_sums(self.sums).cpu()


def _binned(
    data: LogitBatches | tuple[Tensor, Tensor],
    temperatures: Tensor,
    num_bins: int,
    pixels_per_image: PixelsPerImage = "all",
    seed: int = 0,
    keep: PixelReservoir | None = None,
) -> tuple[_BinnedTop1, int, int]:
    """The accumulated sums, the labelled pixels streamed and the frames (sampled pixels also offered to ``keep``)."""
    acc = _BinnedTop1(temperatures, num_bins)
    labelled = frames = 0
    for frame in frame_pixels(as_batches(data), pixels_per_image, seed):
        acc.update(frame.logits, frame.target)
        if keep is not None:
            keep.update(frame.logits.detach(), frame.target)
        labelled += frame.labelled
        frames += 1
    _check_nonempty(frames, acc.pixels)
    return acc, labelled, frames


def ece_by_temperature(
    data: LogitBatches | tuple[Tensor, Tensor], temperatures: Tensor | list[float], num_bins: int = 15
) -> Tensor:
    """Top-1 ECE (equal-width bins, every non-void pixel) of ``logits / T`` for each T, in one streaming pass."""
    return _binned(data, torch.as_tensor(temperatures, dtype=torch.float64), num_bins)[0].ece()


def expected_calibration_error(logits: Tensor, target: Tensor, num_bins: int = 15, temperature: float = 1.0) -> float:
    """Top-1 ECE with equal-width bins over non-void pixels of ``logits / temperature``."""
    return float(ece_by_temperature((logits, target), [temperature], num_bins)[0])


def _check_nonempty(frames: int, pixels: int) -> None:
    if frames == 0:
        raise ValueError("fit_temperature: no (logits, target) batches were given; the calibration set is empty")
    if pixels == 0:
        raise ValueError(
            f"fit_temperature: the {frames} frame(s) hold no pixel with a train id (all void {VOID_ID} "
            f"or OOD {OOD_ID}); temperature scaling needs labelled in-distribution pixels"
        )


def _fit_nll(z: Tensor, y: Tensor, max_iter: int) -> float:
    # Callers may sit inside Lightning's inference-mode loops; the fit needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        z, y = z.clone(), y.clone()
        log_t = torch.zeros((), dtype=torch.float32, device=z.device, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z / log_t.exp(), y)
            loss.backward()
            return loss

        optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or t <= 0:
        raise FloatingPointError(f"fit_temperature: NLL fit diverged (T={t}); try method='ece_grid'")
    return t


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature, with the top-1 ECE before (T = 1) and after scaling on the pixels the fit used."""

    temperature: float
    method: str
    pixels: int
    """Labelled (train-id) pixels in the frames streamed."""
    fit_pixels: int
    """Pixels the fit and the two ECE values used: the per-frame sample (``ece_grid``), or its
    reservoir subsample of at most ``max_pixels`` (``nll``)."""
    ece_before: float
    ece_after: float
    num_bins: int
    sampled_pixels: int = 0
    """Pixels of the per-frame samples (``fit_pixels`` with ``ece_grid``; ``nll`` subsamples them)."""
    frames: int = 0
    """Frames streamed (a ``(B,K,H,W)`` batch holds B, an ``(N,K)`` batch is one)."""
    pixels_per_image: int | str = "all"
    """The per-frame sample size (``"all"``: every labelled pixel)."""
    searched: tuple[float, float] | None = None
    """``ece_grid``: the range of temperatures searched, ``[lowest, upper bound)`` (wider than the
    grid when the best T lay on one of its edges)."""
    grid_notes: tuple[str, ...] = ()
    """``ece_grid``: each time the best T lay on an edge of the searched temperatures, and what was done."""
    extension_pixels: int | None = None
    """Pixels the extended search used when the data could not be streamed again (a subsample of
    at most ``max_pixels``); ``None`` when every extension streamed all sampled pixels again."""

    @property
    def on_grid_edge(self) -> bool:
        """Whether T is still on an edge of the temperatures searched (not a minimum of the ECE)."""
        return bool(self.grid_notes) and "not a minimum" in self.grid_notes[-1]

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for checkpoints, JSON and loggers)."""
        return asdict(self)


def _fit_ece_grid(
    data: LogitBatches | tuple[Tensor, Tensor],
    grid: tuple[float, float, float],
    num_bins: int,
    pixels_per_image: PixelsPerImage,
    max_pixels: int,
    seed: int,
    extend_grid: bool,
) -> TemperatureFit:
    temps = temperature_grid(grid)
    replayable = is_replayable(data)
    keep = PixelReservoir(max_pixels, seed) if extend_grid and not replayable else None
    # T = 1 rides along in the same pass for the ECE before scaling
    acc, labelled, frames = _binned(data, torch.cat([temps, temps.new_ones(1)]), num_bins, pixels_per_image, seed, keep)
    ece = acc.ece()
    used: list[int] = []

    def evaluate(more: Tensor) -> Tensor:
        if keep is None:
            return _binned(data, more, num_bins, pixels_per_image, seed)[0].ece()
        assert keep.z is not None and keep.y is not None
        used.append(int(keep.y.numel()))
        return _binned((keep.z, keep.y), more, num_bins)[0].ece()

    t, ece_after, notes, searched = search_grid(evaluate, temps, ece[:-1], grid, extend=extend_grid)
    if used and t not in temps.tolist():
        # T lies outside the grid: its ECE on every sampled pixel is not known without another pass.
        notes = (*notes, f"the extended search ran on a uniform subsample of {used[0]:,} sampled pixels")
    return TemperatureFit(
        temperature=t,
        method="ece_grid",
        pixels=labelled,
        fit_pixels=acc.pixels,
        ece_before=float(ece[-1]),
        ece_after=ece_after,
        num_bins=num_bins,
        sampled_pixels=acc.pixels,
        frames=frames,
        pixels_per_image=pixels_per_image,
        searched=searched,
        grid_notes=notes,
        extension_pixels=used[0] if used else None,
    )


def fit_temperature(
    data: LogitBatches | tuple[Tensor, Tensor],
    method: FitMethod = "nll",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    max_pixels: int = 2_000_000,
    seed: int = 0,
    max_iter: int = 100,
    extend_grid: bool = True,
) -> TemperatureFit:
    """Fit one global temperature on ``(logits, target)`` batches (or one collected pair).

    Args:
        data: an iterable of ``(logits, target)`` pairs, streamed once, or a single pair.
            Logits are unscaled (B,K,H,W) or (N,K); targets train ids with 254/255 left out.
            The ECE grid runs on the logits' device (a GPU when the model is on one).
        method: ``"nll"`` (LBFGS on the mean NLL over a pixel subsample) or ``"ece_grid"``
            (the paper's grid search of the top-1 ECE over every sampled pixel).
        grid: ``(start, stop, step)`` of the ECE grid; stop is excluded.
        num_bins: equal-width confidence bins of the ECE.
        pixels_per_image: labelled pixels drawn per frame (uniformly, without replacement;
            all of them when fewer), or ``"all"``. The default is the authors' 20,000.
        max_pixels: cap of the NLL method's uniform subsample of the sampled pixels.
        seed: seed of the per-frame samples (frame i draws from ``(seed, i)``) and of that subsample.
        max_iter: LBFGS iterations of the NLL method.
        extend_grid: ``ece_grid``: while the best T lies on an edge of the searched temperatures,
            search beyond it (:func:`~synthrel_lightning.calibration.grid_search.search_grid`); the
            fit's ``grid_notes`` say so. ``False``: keep the grid and only report the edge.

    Returns:
        The fit: ``temperature`` T such that ``logits / T`` is calibrated, and the ECE at
        T = 1 and at T on the pixels used.
    """
    if method not in ("nll", "ece_grid"):
        raise ValueError(f"fit_temperature: method must be 'nll' or 'ece_grid', got {method!r}")
    if method == "ece_grid":
        return _fit_ece_grid(data, grid, num_bins, pixels_per_image, max_pixels, seed, extend_grid)
    reservoir = PixelReservoir(max_pixels, seed)
    labelled = frames = 0
    for frame in frame_pixels(as_batches(data), pixels_per_image, seed):
        reservoir.update(frame.logits.detach(), frame.target)
        labelled += frame.labelled
        frames += 1
    _check_nonempty(frames, reservoir.pixels)
    assert reservoir.z is not None and reservoir.y is not None
    temperature = _fit_nll(reservoir.z, reservoir.y, max_iter)
    before, after = ece_by_temperature((reservoir.z, reservoir.y), [1.0, temperature], num_bins).tolist()
    return TemperatureFit(
        temperature=temperature,
        method=method,
        pixels=labelled,
        fit_pixels=int(reservoir.y.numel()),
        ece_before=before,
        ece_after=after,
        num_bins=num_bins,
        sampled_pixels=reservoir.pixels,
        frames=frames,
        pixels_per_image=pixels_per_image,
    )


__all__ = [
    "PAPER_GRID",
    "FitMethod",
    "TemperatureFit",
    "ece_by_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "temperature_grid",
]
