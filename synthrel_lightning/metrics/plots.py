"""Figures of the dataset-level metrics: reliability diagram, ROC and precision-recall curves.

Built on :func:`synthrel_lightning.figures.new_figure` (matplotlib imported lazily, Agg
backend, no pyplot state); each function draws into the axes it is given, if any. The
metric classes' ``plot()`` methods wrap them and return ``(figure, axes)`` like
torchmetrics' ``Metric.plot``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from synthrel_lightning.figures import new_figure
from synthrel_lightning.metrics.functional import ece_from_sums

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _root_figure(ax: Axes) -> Figure:
    """The top-level figure holding ``ax`` (the one that can be saved, also when ``ax`` lies in a subfigure)."""
    from matplotlib.figure import SubFigure

    fig = ax.figure
    return fig.figure if isinstance(fig, SubFigure) else fig


def reliability_diagram(sums: Tensor, title: str | None = None, ax: Axes | None = None) -> tuple[Figure, Axes]:
    """Top-1 reliability diagram from equal-width bin sums ``(3, B)`` (count, confidence sum, correctness sum).

    Per non-empty bin: the accuracy (blue bar) and the gap between accuracy and mean confidence,
    drawn so that it never covers the accuracy bar: above it, filled red, where the model is
    over-confident (confidence > accuracy); inside it, as a green hatched outline, where it is
    under-confident (accuracy > confidence). Empty bins get no bar. The share of pixels per bin
    is drawn as a grey step line on a right-hand axis; the ECE and the pixel count are written
    on the plot. Every colour drawn is in the legend.
    """
    sums = torch.as_tensor(sums, dtype=torch.float64).detach().cpu()
    count, conf, correct = sums[0], sums[1], sums[2]
    num_bins = count.numel()
    total = float(count.sum())
    filled = (count > 0).numpy()
    width = 1.0 / num_bins
    left = np.arange(num_bins) * width
    acc = (correct / count.clamp_min(1)).numpy()
    mean_conf = (conf / count.clamp_min(1)).numpy()

    if ax is None:
        fig = new_figure((5.0, 4.6))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = _root_figure(ax)
    ax.bar(left[filled], acc[filled], width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    over = filled & (mean_conf > acc)
    under = filled & (mean_conf < acc)
    if over.any():
        ax.bar(
            left[over],
            mean_conf[over] - acc[over],
            bottom=acc[over],
            width=width,
            align="edge",
            edgecolor="tab:red",
            color="tab:red",
            alpha=0.3,
            label="gap, over-confident (confidence > accuracy)",
        )
    if under.any():
        # Inside the accuracy bar: an outline with hatching only, so the bar's own colour stays visible.
        ax.bar(
            left[under],
            acc[under] - mean_conf[under],
            bottom=mean_conf[under],
            width=width,
            align="edge",
            fill=False,
            edgecolor="tab:green",
            hatch="///",
            linewidth=1.0,
            label="gap, under-confident (accuracy > confidence)",
        )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    share_ax = ax.twinx()
    share = (count / max(total, 1.0)).numpy()
    share_ax.step(np.r_[left, 1.0], np.r_[share, share[-1:]], where="post", color="tab:gray", linewidth=1)
    share_ax.set_ylabel("share of pixels", color="tab:gray")
    share_ax.set_ylim(0, 1)
    share_ax.tick_params(axis="y", colors="tab:gray")
    ece = float(ece_from_sums(sums))
    text = f"ECE {ece:.4f}\n{int(total):,} pixels" if total > 0 else "no pixels"
    ax.text(
        0.03,
        0.97,
        text,
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax


def _fmt(values: Mapping[str, Any], key: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else f"{value:.4f}"


def _prevalence(curves: Mapping[str, Any]) -> float | None:
    """The share of OOD pixels: ``curves["prevalence"]``, or the precision where the curves include every pixel.

    At the threshold that takes every pixel (FPR = TPR = 1), precision is P / (P + N), the
    prevalence; it is read there only when the ROC and precision-recall arrays come from the same
    thresholds (recall equals TPR point by point), as in ``PixelOODMetrics.curves()``.
    """
    if curves.get("prevalence") is not None:
        return float(curves["prevalence"])
    fpr, tpr = np.asarray(curves.get("fpr", [])), np.asarray(curves.get("tpr", []))
    recall, precision = np.asarray(curves.get("recall", [])), np.asarray(curves.get("precision", []))
    aligned = fpr.size > 0 and fpr.shape == tpr.shape == recall.shape == precision.shape and np.allclose(recall, tpr)
    if aligned and np.isclose(fpr[-1], 1.0) and np.isclose(tpr[-1], 1.0):
        return float(precision[-1])
    return None


def roc_pr_figure(curves: Mapping[str, Any], title: str | None = None, axes: tuple[Axes, Axes] | None = None) -> Figure:
    """ROC and precision-recall curves side by side (in ``axes`` when given), from ``PixelOODMetrics.curves()``.

    AUROC and FPR95 (ROC legend and title) and AP (precision-recall legend and title)
    are read from ``curves``' ``auroc``, ``fpr95`` and ``ap`` entries when present
    (``PixelOODMetrics.curves()`` gives the exact dataset-level values). The precision-recall
    panel draws the no-skill baseline, precision = prevalence (Saito & Rehmsmeier, PLoS ONE 2015),
    so an AP can be read against chance.
    """
    if axes is None:
        fig = new_figure((9.0, 4.0))
        ax_roc, ax_pr = fig.subplots(1, 2)
    else:
        ax_roc, ax_pr = axes
        fig = _root_figure(ax_roc)
    auroc, fpr95, ap = _fmt(curves, "auroc"), _fmt(curves, "fpr95"), _fmt(curves, "ap")
    roc_label = ", ".join(x for x in (auroc and f"AUROC {auroc}", fpr95 and f"FPR95 {fpr95}") if x) or "ROC"
    ax_roc.plot(np.asarray(curves["fpr"]), np.asarray(curves["tpr"]), color="tab:blue", label=roc_label)
    ax_roc.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax_roc.axhline(0.95, color="tab:red", linewidth=0.8, linestyle=":", label="TPR 0.95")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax_roc.set_title("ROC" + (f" (AUROC {auroc}, FPR95 {fpr95})" if auroc and fpr95 else ""), fontsize=10)
    ax_pr.plot(
        np.asarray(curves["recall"]),
        np.asarray(curves["precision"]),
        color="tab:orange",
        label=f"AP {ap}" if ap else "precision-recall",
    )
    prevalence = _prevalence(curves)
    if prevalence is not None:
        # A detector without skill has precision = prevalence at every recall: AP near it is chance.
        ax_pr.axhline(
            prevalence, color="tab:gray", linewidth=1, linestyle="--", label=f"no skill (prevalence {prevalence:.4g})"
        )
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set_title("precision-recall" + (f" (AP {ap})" if ap else ""), fontsize=10)
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def iou_bars(
    iou: Tensor, class_names: list[str], miou: float, title: str | None = None, ax: Axes | None = None
) -> tuple[Figure, Axes]:
    """Per-class IoU as horizontal bars (absent classes marked), with the mIoU as a vertical line."""
    values = torch.as_tensor(iou, dtype=torch.float64).detach().cpu().numpy()
    if ax is None:
        fig = new_figure((5.5, 0.25 * len(values) + 1.2))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = _root_figure(ax)
    rows = np.arange(len(values))
    present = ~np.isnan(values)
    ax.barh(rows[present], values[present], color="tab:blue")
    for row in rows[~present]:
        ax.text(0.01, row, "absent", va="center", fontsize=7, color="tab:gray")
    if not math.isnan(miou):
        ax.axvline(miou, color="tab:red", linewidth=1, label=f"mIoU {miou:.4f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(rows, class_names, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="IoU", xlim=(0, 1))
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax


__all__ = ["iou_bars", "reliability_diagram", "roc_pr_figure"]
