"""Per-set calibration statistics over a temperature grid: what the calibration study fits and scores from.

One streaming pass over a set's ``(logits, target)`` keeps, for every temperature T of a
grid (the authors' ``[0.5, 10)`` step ``0.01`` plus ``T = 1``):

- the top-1 bin sums (count, summed confidence, summed correctness; 15 equal-width bins)
  of ``softmax(z / T)`` (:func:`~synthrel_lightning.calibration.grid.grid_bin_sums`), hence
  the ECE at every T;
- the summed negative log-likelihood ``log sum_k exp(z_k / T) - z_y / T``.

Both are additive over pixels, so a set's :class:`SetCalibrationStats` is a few
kilobytes however large the set; fitting T on one set (ECE or NLL minimum over the grid)
and scoring another set at that T are lookups. The pixels are the seeded per-frame sample
of :mod:`synthrel_lightning.calibration.sampling` (20,000 labelled pixels per frame by
default, as the authors' relis code; frame ``i`` draws from ``(seed, i)``); void (255) and
OOD (254) pixels are left out.

:class:`CalibrationStatsCollector` fills them inside a Lightning validation run from the
:class:`~synthrel_lightning.evaluation_result.EvaluationResult` each step returns (the
model's logits are divided back by its ``temperature`` buffer: the statistics are those
of the unscaled outputs), so the model runs once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.calibration.grid import grid_bin_sums
from synthrel_lightning.calibration.logits import as_batches
from synthrel_lightning.calibration.sampling import (
    DEFAULT_PIXELS_PER_IMAGE,
    PixelsPerImage,
    check_pixels_per_image,
    labelled_pixels,
    sample_positions,
)
from synthrel_lightning.calibration.temperature import PAPER_GRID, temperature_grid
from synthrel_lightning.metrics.functional import ece_from_sums

_LOG2E = math.log2(math.e)


def study_temperatures(grid: tuple[float, float, float] = PAPER_GRID) -> Tensor:
    """The grid's temperatures with ``T = 1`` added (sorted, float64): every T the study fits or scores."""
    temps = temperature_grid(grid)
    if not bool((temps - 1.0).abs().lt(1e-9).any()):
        temps = torch.cat([temps, temps.new_ones(1)]).sort().values
    return temps


def nll_sums(z: Tensor, y: Tensor, temperatures: Tensor, max_elements: int = 1 << 20) -> Tensor:
    """Summed NLL ``(T,)`` float64 of ``(N, K)`` logits for each T (see :func:`_nll_sums`).

    On a CPU the pixels are split between ``torch.get_num_threads()`` Python threads each
    running single-threaded torch ops, as :func:`~synthrel_lightning.calibration.grid.grid_bin_sums`
    does (small ops parallelised inside torch spend their time synchronising threads).
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    workers = max(1, min(threads, z.shape[0] // 2048))
    if z.device.type != "cpu":
        return _nll_sums(z, y, temperatures, max_elements)
    bounds = [z.shape[0] * i // workers for i in range(workers + 1)]

    def part(i: int) -> Tensor:
        torch.set_num_threads(1)
        lo, hi = bounds[i], bounds[i + 1]
        return _nll_sums(z[lo:hi], y[lo:hi], temperatures, max_elements)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(part, range(workers)))
    finally:
        torch.set_num_threads(threads)
    return torch.stack(parts).sum(dim=0)


def _nll_sums(z: Tensor, y: Tensor, temperatures: Tensor, max_elements: int = 1 << 20) -> Tensor:
    """Summed NLL ``sum_i [log sum_k exp(z_ik / T) - z_iy / T]`` (float64) of ``(N, K)`` logits for each T.

    Written as ``log(1 + sum_{k != top} 2 ** (a_k / T)) + (z_max - z_y) / T`` with
    ``a_k = (z_k - z_max) log2(e) <= 0``: nothing overflows for any T > 0, and the class sum
    runs over rows of a (classes, temperatures, pixels) block, as in
    :func:`~synthrel_lightning.calibration.grid.grid_bin_sums`.
    """
    temps = temperatures.to(device=z.device, dtype=torch.float32).reshape(-1)
    out = torch.zeros(temps.numel(), dtype=torch.float64, device=z.device)
    if z.shape[0] == 0:
        return out
    z = z.float()
    top = z.amax(dim=1, keepdim=True)
    gap = (top.squeeze(1) - z.gather(1, y.long().view(-1, 1)).squeeze(1)).double().sum()
    out += gap / temps.double()
    n, k = z.shape
    if k == 1:
        return out
    others = (z - top).sort(dim=1).values[:, :-1]  # the top class adds exactly 1
    scaled = (others * _LOG2E).t().contiguous()  # (K-1, N)
    rows = k - 1
    px = max(1, min(n, max_elements // (rows * 16)))
    tc = max(1, min(temps.numel(), max_elements // (rows * px)))
    work = torch.empty(rows * tc * px, dtype=torch.float32, device=z.device)
    for p0 in range(0, n, px):
        a = scaled[:, p0 : p0 + px].unsqueeze(1)
        pc = a.shape[-1]
        for t0 in range(0, temps.numel(), tc):
            t = temps[t0 : t0 + tc]
            x = torch.div(a, t.view(1, -1, 1), out=work[: rows * t.numel() * pc].view(rows, t.numel(), pc))
            lse = x.exp2_().sum(dim=0).log1p_()  # (tc, pc)
            out[t0 : t0 + t.numel()] += lse.double().sum(dim=1)
    return out


@dataclass
class SetCalibrationStats:
    """Additive calibration statistics of one set at every temperature of a grid.

    ``bin_sums`` is ``(T, 3, num_bins)`` (count, summed confidence, summed correctness),
    ``nll_sums`` is ``(T,)``; ``pixels`` the sampled labelled pixels they cover.
    """

    temperatures: Tensor
    bin_sums: Tensor
    nll_sums: Tensor
    pixels: int = 0
    labelled: int = 0
    frames: int = 0
    pixels_per_image: int | str = DEFAULT_PIXELS_PER_IMAGE
    seed: int = 0

    @property
    def num_bins(self) -> int:
        """Equal-width confidence bins of the ECE."""
        return int(self.bin_sums.shape[-1])

    def ece(self) -> Tensor:
        """Top-1 ECE at each temperature (float64, NaN without pixels)."""
        return ece_from_sums(self.bin_sums)

    def nll(self) -> Tensor:
        """Mean NLL per pixel at each temperature (NaN without pixels)."""
        return self.nll_sums / self.pixels if self.pixels else torch.full_like(self.nll_sums, float("nan"))

    def index_of(self, temperature: float) -> int:
        """Index of ``temperature`` in the grid (it must be on it, to 1e-6)."""
        d = (self.temperatures - float(temperature)).abs()
        i = int(d.argmin())
        if float(d[i]) > 1e-6:
            raise ValueError(f"temperature {temperature} is not on the statistics' grid")
        return i

    def fit(self, method: str, grid: tuple[float, float, float] | None = None) -> float:
        """T minimising the ECE (``"ece_grid"``) or the NLL (``"nll"``) over the grid (``T = 1`` included only
        if the fitting grid holds it); ``grid`` restricts the search to ``[start, stop)`` of that grid."""
        values = {"ece_grid": self.ece, "nll": self.nll}.get(method)
        if values is None:
            raise ValueError(f"calibration method must be 'ece_grid' or 'nll', got {method!r}")
        if not self.pixels:
            raise ValueError("cannot fit a temperature: the set's statistics hold no labelled pixel")
        start, stop, step = grid or PAPER_GRID
        on_grid = (self.temperatures >= start - 1e-9) & (self.temperatures < stop - 1e-9)
        offset = (self.temperatures - start) / step
        on_grid &= (offset - offset.round()).abs() < 1e-6
        v = values().clone()
        v[~on_grid] = float("inf")
        return round(float(self.temperatures[int(torch.argmin(v))]), 10)

    def merge(self, other: SetCalibrationStats) -> SetCalibrationStats:
        """The statistics of both pixel sets (same grid and bins)."""
        if self.temperatures.shape != other.temperatures.shape or not torch.allclose(
            self.temperatures, other.temperatures
        ):
            raise ValueError("cannot merge calibration statistics computed on different temperature grids")
        if self.num_bins != other.num_bins:
            raise ValueError(f"cannot merge statistics with {self.num_bins} and {other.num_bins} bins")
        return SetCalibrationStats(
            self.temperatures,
            self.bin_sums + other.bin_sums,
            self.nll_sums + other.nll_sums,
            self.pixels + other.pixels,
            self.labelled + other.labelled,
            self.frames + other.frames,
            self.pixels_per_image,
            self.seed,
        )

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Plain arrays (for ``np.savez``), keys prefixed with ``prefix``."""
        meta = {k: getattr(self, k) for k in ("pixels", "labelled", "frames", "pixels_per_image", "seed")}
        return {
            f"{prefix}temperatures": self.temperatures.cpu().numpy(),
            f"{prefix}bin_sums": self.bin_sums.cpu().numpy(),
            f"{prefix}nll_sums": self.nll_sums.cpu().numpy(),
            f"{prefix}meta": np.array(json.dumps(meta)),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], prefix: str = "") -> SetCalibrationStats:
        """The inverse of :meth:`to_arrays`."""
        meta = json.loads(str(arrays[f"{prefix}meta"]))
        return cls(
            torch.as_tensor(np.asarray(arrays[f"{prefix}temperatures"]), dtype=torch.float64),
            torch.as_tensor(np.asarray(arrays[f"{prefix}bin_sums"]), dtype=torch.float64),
            torch.as_tensor(np.asarray(arrays[f"{prefix}nll_sums"]), dtype=torch.float64),
            **meta,
        )


def save_stats(path: str | Path, stats: Mapping[str, SetCalibrationStats]) -> Path:
    """Write ``{set name: statistics}`` to one ``.npz`` file, atomically."""
    arrays: dict[str, np.ndarray] = {"sets": np.array(json.dumps(list(stats)))}
    for i, s in enumerate(stats.values()):
        arrays.update(s.to_arrays(f"{i}/"))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub: a ** mapping might hold allow_pickle

    return atomic_write(path, write)


def load_stats(path: str | Path) -> dict[str, SetCalibrationStats]:
    """Read a file written by :func:`save_stats`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = json.loads(str(data["sets"]))
            return {n: SetCalibrationStats.from_arrays(data, f"{i}/") for i, n in enumerate(names)}
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a calibration statistics file written by save_stats ({e})") from e


@dataclass
class StatsAccumulator:
    """Accumulates :class:`SetCalibrationStats` batch by batch (frames numbered across batches for the sample)."""

    temperatures: Tensor = field(default_factory=study_temperatures)
    num_bins: int = 15
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE
    seed: int = 0
    where: str = "calibration statistics"

    def __post_init__(self) -> None:
        self.temperatures = torch.as_tensor(self.temperatures, dtype=torch.float64).reshape(-1)
        self._cap = check_pixels_per_image(self.pixels_per_image, self.where)
        self.bin_sums = torch.zeros(self.temperatures.numel(), 3, int(self.num_bins), dtype=torch.float64)
        self.nll = torch.zeros(self.temperatures.numel(), dtype=torch.float64)
        self.pixels = self.labelled = self.frames = 0
        self._k: int | None = None

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a ``(B,K,H,W)`` batch with ``(B,H,W)`` targets, or one ``(N,K)`` frame with ``(N,)`` targets."""
        if logits.ndim == 4 and target.ndim == 3 and target.shape == (logits.shape[0], *logits.shape[2:]):
            frames = logits.reshape(*logits.shape[:2], -1)
            targets = target.reshape(target.shape[0], -1)
        elif logits.ndim == 2 and target.ndim == 1 and target.shape[0] == logits.shape[0]:
            frames, targets = logits.t().unsqueeze(0), target.unsqueeze(0)
        else:
            raise ValueError(
                f"{self.where}: logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match; "
                "expected (B,K,H,W) with (B,H,W), or (N,K) with (N,)"
            )
        k = frames.shape[1]
        if self._k is not None and k != self._k:
            raise ValueError(f"{self.where}: {k} classes, but earlier batches had {self._k}")
        self._k = k
        targets = targets.to(frames.device).long()
        valid = labelled_pixels(targets, k, self.where)
        for f in range(frames.shape[0]):
            pos = sample_positions(valid[f], self._cap, self.seed, self.frames)
            z = frames[f].index_select(1, pos).t().float().contiguous()
            y = targets[f, pos]
            if z.numel() and not bool(torch.isfinite(z).all()):
                raise ValueError(f"{self.where}: non-finite logits at labelled pixels of frame {self.frames}")
            if z.shape[0]:
                self.bin_sums += grid_bin_sums(z, y, self.temperatures, int(self.num_bins)).cpu()
                self.nll += nll_sums(z, y, self.temperatures).cpu()
            self.pixels += int(z.shape[0])
            self.labelled += int(valid[f].sum())
            self.frames += 1

    def result(self) -> SetCalibrationStats:
        """The statistics accumulated so far."""
        return SetCalibrationStats(
            self.temperatures.clone(),
            self.bin_sums.clone(),
            self.nll.clone(),
            self.pixels,
            self.labelled,
            self.frames,
            self.pixels_per_image,
            self.seed,
        )


def calibration_stats(
    data: Iterable[tuple[Tensor, Tensor]] | tuple[Tensor, Tensor],
    temperatures: Tensor | None = None,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    seed: int = 0,
) -> SetCalibrationStats:
    """The :class:`SetCalibrationStats` of ``(logits, target)`` batches (or one pair), unscaled logits."""
    acc = StatsAccumulator(
        study_temperatures() if temperatures is None else temperatures, num_bins, pixels_per_image, seed
    )
    for z, y in as_batches(data):
        acc.update(z, y)
    return acc.result()


class CalibrationStatsCollector(Callback):
    """Fills :class:`SetCalibrationStats` of chosen validation sets from each step's ``EvaluationResult``.

    Args:
        sets: names of the validation sets to keep statistics of (others are skipped).
        temperatures: the grid (default :func:`study_temperatures`).
        num_bins, pixels_per_image, seed: as :func:`calibration_stats`.

    Single-process only: the per-frame sample is numbered by frame order within the set.
    """

    def __init__(
        self,
        sets: Sequence[str],
        temperatures: Tensor | None = None,
        num_bins: int = 15,
        pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.sets = list(sets)
        self.temperatures = study_temperatures() if temperatures is None else temperatures
        self.num_bins = int(num_bins)
        self.pixels_per_image = pixels_per_image
        self.seed = int(seed)
        self.accumulators: dict[str, StatsAccumulator] = {}

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Refuse several processes (each would sample its own shard of frames)."""
        if trainer.world_size > 1:
            raise RuntimeError(
                f"CalibrationStatsCollector: {trainer.world_size} processes; collect calibration statistics on "
                "one device (each process would see only its shard of frames)"
            )

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Add the batch's unscaled logits to its set's statistics."""
        from synthrel_lightning.evaluation_result import EvaluationResult

        if trainer.sanity_checking:
            return
        if not isinstance(outputs, EvaluationResult):
            raise TypeError(
                f"CalibrationStatsCollector: {type(pl_module).__name__}.validation_step returned "
                f"{type(outputs).__name__}; it must return an EvaluationResult, as OODSegmenter does"
            )
        if outputs.set_name not in self.sets or outputs.label is None:
            return
        acc = self.accumulators.get(outputs.set_name)
        if acc is None:
            acc = self.accumulators[outputs.set_name] = StatsAccumulator(
                self.temperatures, self.num_bins, self.pixels_per_image, self.seed, f"set {outputs.set_name!r}"
            )
        t = getattr(pl_module, "temperature", None)
        scale = float(t) if isinstance(t, Tensor) and t.numel() == 1 else 1.0
        logits = outputs.logits.float() * scale if not math.isclose(scale, 1.0) else outputs.logits.float()
        acc.update(logits, outputs.label)

    def results(self) -> dict[str, SetCalibrationStats]:
        """``{set name: statistics}`` of the sets seen."""
        return {name: acc.result() for name, acc in self.accumulators.items()}


__all__ = [
    "CalibrationStatsCollector",
    "SetCalibrationStats",
    "StatsAccumulator",
    "calibration_stats",
    "load_stats",
    "nll_sums",
    "save_stats",
    "study_temperatures",
]
