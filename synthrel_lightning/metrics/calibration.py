"""Streaming calibration metrics for segmentation: ECE, adaptive ECE, Brier score, NLL.

Everything is kept as per-bin sums (never per-pixel lists), so memory is constant.

* ``ece``: top-1 expected calibration error with ``num_bins`` equal-width
  confidence bins ``[i/B, (i+1)/B)`` (the last one closed), exact.
* ``adaptive_ece``: equal-mass ECE (``num_bins`` bins holding the same number of
  pixels). Approximation: the confidences are histogrammed on a fine, log-scale
  grid of ``u = 1 - confidence`` (64 bins per power of two for ``u`` in
  ``[2**-24, 1)``, i.e. bins narrower than 1.6 % of ``u``, and one bin for
  ``u < 2**-24``, which float32 cannot resolve anyway); equal-mass boundaries
  are placed on the cumulative counts, and a fine bin that straddles a boundary
  is split in proportion to its count (its pixels are treated as exchangeable,
  the same as a random tie-break of an exact sort). Typical error vs the exact
  sort-based value: < 1e-3.
* ``brier``: multi-class Brier score ``sum_k (p_k - y_k)^2`` averaged over pixels.
* ``nll``: mean negative log-likelihood of the true class.
* ``accuracy``: top-1 pixel accuracy.

Ignored pixels: ``ignore_index``, 254 (OOD), and every id outside ``[0, K)``.
Logits are expected already temperature-scaled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchmetrics import Metric

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.metrics._checks import check_finite
from synthrel_lightning.metrics.functional import (
    FINE_BINS,
    adaptive_ece_from_sums,
    ece_from_sums,
    fine_bin_sums,
    top1_bin_sums,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_NONFINITE_HINT = "check the model's output (e.g. compute in float32, look for exploding activations)"


class CalibrationMetrics(Metric):
    """Streaming top-1 ECE, adaptive ECE, Brier score, NLL and accuracy over non-ignored pixels.

    ``update(logits (B, K, H, W), target (B, H, W) train ids)``; see the module
    docstring for definitions and the adaptive-ECE approximation.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    bins: Tensor
    fine_bins: Tensor
    brier_sum: Tensor
    nll_sum: Tensor

    def __init__(self, num_bins: int = 15, ignore_index: int = VOID_ID, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_bins < 1:
            raise ValueError(f"CalibrationMetrics: num_bins must be >= 1, got {num_bins}")
        self.num_bins = int(num_bins)
        self.ignore_index = int(ignore_index)
        # rows: pixel count, summed confidence, summed correctness (see metrics.functional)
        self.add_state("bins", default=torch.zeros(3, num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fine_bins", default=torch.zeros(3, FINE_BINS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("brier_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nll_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of (temperature-scaled) logits ``(B, K, H, W)`` and train-id targets ``(B, H, W)``."""
        if not isinstance(logits, Tensor) or logits.ndim != 4 or not logits.is_floating_point():
            raise ValueError(
                f"CalibrationMetrics: logits must be a float (B, K, H, W) tensor, got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
            )
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"CalibrationMetrics: target shape {tuple(target.shape)} does not match logits' (B, H, W) "
                f"{(logits.shape[0], *logits.shape[2:])}"
            )
        if target.is_floating_point():
            raise ValueError(f"CalibrationMetrics: target must hold integer train ids, got {target.dtype}")
        k = logits.shape[1]
        target = target.to(logits.device).long()
        valid = (target >= 0) & (target < k) & (target != self.ignore_index) & (target != OOD_ID)
        check_finite(logits, valid, type(self).__name__, "logits", channel_dim=1, hint=_NONFINITE_HINT)
        z = logits.movedim(1, -1)[valid].float()  # (N, K)
        y = target[valid]
        logp = z.log_softmax(dim=-1)
        logp_max, pred = logp.max(dim=-1)
        conf = logp_max.exp()
        correct = pred == y
        logp_y = logp.gather(-1, y[:, None]).squeeze(-1)
        p = logp.exp()
        # sum_k (p_k - y_k)^2 = sum_k p_k^2 - 2 p_y + 1
        brier = (p * p).sum(-1) - 2 * logp_y.exp() + 1
        self.brier_sum += brier.sum(dtype=torch.float64)
        self.nll_sum += (-logp_y).sum(dtype=torch.float64)

        self.bins += top1_bin_sums(conf, correct, self.num_bins)
        self.fine_bins += fine_bin_sums(conf, correct)

    def _total(self) -> int:
        return int(self.bins[0].sum())

    def compute(self) -> dict[str, Tensor]:
        """``ece``, ``adaptive_ece``, ``brier``, ``nll`` and ``accuracy`` over all pixels seen."""
        n = self._total()
        if n == 0:
            raise ValueError("CalibrationMetrics: no valid (non-ignored, in-distribution) pixel was seen")
        return {
            "ece": ece_from_sums(self.bins),
            "adaptive_ece": adaptive_ece_from_sums(self.fine_bins, self.num_bins),
            "brier": self.brier_sum / n,
            "nll": self.nll_sum / n,
            "accuracy": self.bins[2].sum() / n,
        }

    def _synced_bins(self) -> Tensor:
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            return self.bins.detach().clone().cpu()

    def plot(self, ax: Axes | None = None, title: str | None = None) -> tuple[Figure, Axes]:
        """Reliability diagram of the pixels seen on all processes (collective under DDP), as ``(figure, axes)``.

        Empty bins get no bar; the ECE and the pixel count are written on it; see
        :func:`synthrel_lightning.metrics.plots.reliability_diagram`.
        """
        from synthrel_lightning.metrics.plots import reliability_diagram

        return reliability_diagram(self._synced_bins(), title=title, ax=ax)

    def reliability_diagram(self, title: str | None = None) -> Figure:
        """The figure of :meth:`plot`."""
        return self.plot(title=title)[0]
