"""Misclassification detection: PRR (relis), AURC and AUGRC (torch-uncertainty), the risk-coverage curve.

Each non-void pixel is a prediction (the argmax class) with a confidence; it is an error
when the prediction differs from the label. The metrics rank the pixels by confidence, the
most confident first (rejecting the least confident first):

* ``prr``: the prediction rejection ratio as relis computes it (de Jorge et al., "Reliability in
  Semantic Segmentation: Are We on the Right Track?", CVPR 2023; https://github.com/naver/relis,
  ``uncertainty_helpers.py``, ``prediction_rejection_ratio``, also in GenVal's ``relis/`` folder):
  ``100 (A_rnd - A_rej) / (A_rnd - A_orc)``, the trapezoid areas under the rejection curve, the
  random-rejection line and the oracle line over the fraction of pixels. relis treats its base
  error (a fraction) as a percentage when it builds the oracle line, so that line reaches zero
  after ``int(E / 100)`` of the ``E`` errors; we reproduce that, and a perfect ranking therefore
  scores ``100 (N - E) / (N - E / 100)``, slightly below 100. Range about -100..100.
* ``aurc``: the area under the risk-coverage curve as torch-uncertainty computes it (Geifman and
  El-Yaniv, NeurIPS 2017; https://github.com/ENSTA-U2IS-AI/torch-uncertainty,
  ``metrics/classification/risk_coverage.py``, ``AURC``): the risk (error rate) of the ``i`` most
  confident pixels at coverage ``i / N``, trapezoid rule, divided by ``1 - 1/N``.
* ``augrc``: the area under the generalized risk-coverage curve (Traub et al., 2024; the same file,
  ``AUGRC``): the same with the generalized risk ``errors among the i most confident / N``.
* :meth:`MisclassificationMetrics.risk_coverage`: the curve itself.

Confidence: ``"prob"`` (the maximum softmax probability) or ``"entropy"`` (the negative entropy
``sum p' log p'`` with ``p' = p + 1e-16``, relis' ``metric='entropy'``). relis scores a random sample
of pixels per image; we score every non-void pixel.

Ties: the reference code sorts with an unstable ``argsort``, so the order inside a group of equal
confidences is arbitrary there; here every pixel of such a group counts its expected position
(errors spread evenly over the group). With distinct confidences the values are the reference's.

Streaming and mergeable: the state is the binned histogram of :class:`PixelOODMetrics` (score
``-confidence``, positive = error), merged across processes like it; ``mode="exact"`` keeps every
pixel instead. Binned values are those of confidences rounded to their bin.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.metrics.pixel import PixelOODMetrics

CONFIDENCES: tuple[str, ...] = ("prob", "entropy")


def _groups(tps: Tensor, fps: Tensor) -> tuple[Tensor, Tensor]:
    """Errors and pixel counts per group of equal confidence (bin), most confident first."""
    zero = tps.new_zeros(1)
    errors = torch.diff(tps, prepend=zero).flip(0)
    count = errors + torch.diff(fps, prepend=zero).flip(0)
    keep = count > 0
    return errors[keep], count[keep]


def _harmonic_step(start: Tensor, n: Tensor) -> Tensor:
    """``sum_{j=1..n} 1 / (start + j)`` (float64)."""
    direct = 1.0 / (start + 1.0)
    return torch.where(n == 1, direct, torch.digamma(start + n + 1.0) - torch.digamma(start + 1.0))


def relis_oracle_length(errors: int, samples: int) -> int:
    """relis' ``int(base_error / 100 * num_samples)`` with its float32 base error (numpy 2 arithmetic)."""
    base_error = np.float32(errors) / np.float32(samples)
    return int(base_error / np.float32(100.0) * np.float32(samples))


def selective_metrics_from_counts(tps: Tensor, fps: Tensor) -> dict[str, Tensor]:
    """``prr``, ``aurc``, ``augrc`` from cumulative errors ``tps`` and correct pixels ``fps`` at descending uncertainty.

    Index ``i`` counts the pixels whose uncertainty (``-confidence``) is at or above the
    ``i``-th highest distinct value (or bin). NaN where undefined (fewer than 2 pixels; PRR
    without errors or without correct pixels).
    """
    tps, fps = tps.double(), fps.double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=tps.device)
    if tps.numel() == 0 or float(tps[-1] + fps[-1]) < 2:
        return {"prr": nan, "aurc": nan.clone(), "augrc": nan.clone()}
    m, n = _groups(tps, fps)
    total, errors = n.sum(), m.sum()
    start = torch.cumsum(n, 0) - n  # position of each group's first pixel (0-based)
    before = torch.cumsum(m, 0) - m  # errors ranked before the group
    first = m[0] / n[0]  # expected cumulative errors at the most confident pixel
    # sum over positions i of the cumulative errors C_i, and of C_i / (i + 1), ties spread evenly
    cum_sum = (n * before + m * (n + 1) / 2).sum()
    h = _harmonic_step(start, n)
    rate_sum = (before * h + (m / n) * (n - start * h)).sum()
    norm = 1 - 1 / total
    aurc = (rate_sum - (first + errors / total) / 2) / total / norm
    augrc = (cum_sum / total - (first + errors) / total / 2) / total / norm
    # relis' areas, all scaled by 100 N^2: rejection curve, random line, oracle line
    e, big_n = float(errors), float(total)
    if e == 0 or e == big_n:
        prr = nan
    else:
        rejection = float(cum_sum) - (e + float(first)) / 2
        random = e * (big_n - 1 / big_n) / 2
        k = relis_oracle_length(int(e), int(big_n))
        oracle = e * k - 50.0 * k * (k - 1) - (e / 2 if k >= 1 else 0.0)
        prr = torch.tensor(100.0 * (random - rejection) / (random - oracle), dtype=torch.float64, device=tps.device)
    return {"prr": prr, "aurc": aurc, "augrc": augrc}


def confidence_and_errors(
    logits: Tensor, labels: Tensor, confidence: str = "prob", ignore_index: int = VOID_ID
) -> tuple[Tensor, Tensor]:
    """Per-pixel confidence ``(B, H, W)`` and target ``(B, H, W)`` uint8: 1 error, 0 correct, ``ignore_index`` void.

    ``logits`` ``(B, K, H, W)`` (already temperature-scaled); labels ``(B, H, W)`` train ids; labels
    outside ``0..K-1`` are void.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"MisclassificationMetrics: logits (B, K, H, W) and labels (B, H, W) expected, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    probs = torch.softmax(logits.float() if logits.dtype != torch.float64 else logits, dim=1)
    if confidence == "prob":
        conf, pred = probs.max(1)
    else:
        shifted = probs + 1e-16
        conf = (shifted.log() * shifted).sum(1)
        pred = probs.argmax(1)
    labels = labels.to(logits.device)
    valid = (labels >= 0) & (labels < logits.shape[1]) & (labels != ignore_index)
    target = torch.where(valid, (pred != labels).to(torch.uint8), torch.full_like(pred, 255, dtype=torch.uint8))
    return conf, target


class MisclassificationMetrics(PixelOODMetrics):
    """Streaming ``prr`` (relis), ``aurc`` and ``augrc`` (torch-uncertainty) of the per-pixel predictions.

    ``update(logits, labels)``: logits ``(B, K, H, W)``, labels ``(B, H, W)`` train ids
    (``ignore_index`` and ids outside ``0..K-1`` skipped). ``confidence``: ``"prob"`` or
    ``"entropy"``. ``mode`` / ``num_bins``: the state of :class:`PixelOODMetrics` (see the
    module docstring).
    """

    higher_is_better = None

    def __init__(
        self,
        confidence: Literal["prob", "entropy"] = "prob",
        mode: Literal["binned", "exact"] = "binned",
        num_bins: int = 1 << 20,
        ignore_index: int = VOID_ID,
        **kwargs,
    ) -> None:
        if confidence not in CONFIDENCES:
            raise ValueError(
                f"MisclassificationMetrics: unknown confidence {confidence!r}; valid: {', '.join(CONFIDENCES)}"
            )
        # its values need no resolution bound: no exact fallback (fallback_pixels=0)
        super().__init__(mode=mode, num_bins=num_bins, ignore_index=255, fallback_pixels=0, **kwargs)
        self.confidence = confidence
        self.label_ignore_index = int(ignore_index)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch of class scores and labels."""
        conf, target = confidence_and_errors(logits, labels, self.confidence, self.label_ignore_index)
        super().update(-conf, target)

    def is_computable(self) -> bool:
        """True when at least two labelled pixels were seen (on all processes); collective in DDP."""
        return int(self._counts_on_all_processes().sum()) >= 2

    def compute(self) -> dict[str, Tensor]:
        """``prr``, ``aurc``, ``augrc`` over all pixels seen (NaN where undefined)."""
        return selective_metrics_from_counts(*self._curve_counts())

    def risk_coverage(self, max_points: int = 512) -> dict[str, Tensor]:
        """The risk-coverage curve, most confident first: ``coverage``, ``risk``, ``generalized_risk`` (CPU float64).

        One point per group of equal confidence (bin), at most ``max_points`` (evenly spaced,
        the full coverage kept); collective under DDP.
        """
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            m, n = _groups(*[t.double() for t in self._curve_counts()])
        covered, wrong = torch.cumsum(n, 0), torch.cumsum(m, 0)
        keep = torch.unique(torch.linspace(0, n.numel() - 1, min(max_points, n.numel())).round().long())
        total = covered[-1] if n.numel() else n.new_ones(())
        return {
            "coverage": (covered / total)[keep].cpu(),
            "risk": (wrong / covered)[keep].cpu(),
            "generalized_risk": (wrong / total)[keep].cpu(),
        }

    def extra_repr(self) -> str:
        return f"confidence={self.confidence!r}, mode={self.mode!r}, num_bins={self.num_bins}"


__all__ = [
    "CONFIDENCES",
    "MisclassificationMetrics",
    "confidence_and_errors",
    "relis_oracle_length",
    "selective_metrics_from_counts",
]
