"""Metric figures: reliability diagram without bars for empty bins, ROC/PR with AUROC/AP/FPR95, IoU bars."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matplotlib.axes import Axes

from synthrel_lightning.figures import new_figure
from synthrel_lightning.metrics import CalibrationMetrics, PixelOODMetrics, SegmentationIoU
from synthrel_lightning.metrics.plots import roc_pr_figure


def two_class_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes: every top-1 confidence is >= 0.5, so the 7 lowest of 15 bins stay empty."""
    g = torch.Generator().manual_seed(0)
    margin = torch.rand(2, 1, 16, 16, generator=g) * 3
    logits = torch.cat([margin, torch.zeros_like(margin)], 1)
    target = (torch.rand(2, 16, 16, generator=g) < 0.2).long()
    target[:, 0] = 255
    return logits, target


def test_reliability_diagram_draws_no_bar_for_empty_bins_and_states_ece_and_pixels(tmp_path: Path) -> None:
    logits, target = two_class_batch()
    m = CalibrationMetrics()
    m.update(logits, target)
    fig, ax = m.plot(title="val/clean")
    assert isinstance(ax, Axes) and ax.figure is fig
    filled = int((m.bins[0] > 0).sum())
    assert filled <= 8
    # one accuracy bar and one gap bar per non-empty bin, none for the empty ones
    assert len(ax.patches) == 2 * filled
    assert min(p.get_x() for p in ax.patches) >= 0.5 - 1 / 15
    texts = " ".join(t.get_text() for t in ax.texts)
    assert f"ECE {float(m.compute()['ece']):.4f}" in texts
    assert f"{2 * 15 * 16:,} pixels" in texts
    assert ax.get_title() == "val/clean"
    fig.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert m.reliability_diagram().axes  # the figure alone, for loggers


def test_plots_draw_into_given_axes() -> None:
    logits, target = two_class_batch()
    m = CalibrationMetrics()
    m.update(logits, target)
    fig = new_figure((8, 4))
    left, right = fig.subplots(1, 2)
    got_fig, got_ax = m.plot(ax=right)
    assert got_fig is fig and got_ax is right and len(right.patches) > 0 and not left.patches


def test_plots_into_a_subfigure_return_the_top_level_figure(tmp_path: Path) -> None:
    logits, target = two_class_batch()
    m = CalibrationMetrics()
    m.update(logits, target)
    fig = new_figure((8, 4))
    ax = fig.subfigures(1, 2)[1].add_subplot(1, 1, 1)
    got_fig, got_ax = m.plot(ax=ax)
    assert got_fig is fig and got_ax is ax
    got_fig.savefig(tmp_path / "diagram.png")
    assert (tmp_path / "diagram.png").stat().st_size > 0


def test_roc_pr_figure_carries_auroc_ap_fpr95() -> None:
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(4, 32, 32, generator=g) < 0.1).long()
    scores = torch.randn(4, 32, 32, generator=g) + 1.5 * target
    m = PixelOODMetrics(mode="exact")
    m.update(scores, target)
    values = m.compute()
    curves = m.curves()
    for key in ("auroc", "ap", "fpr95"):
        assert float(curves[key]) == pytest.approx(float(values[key]), rel=1e-12)
    fig, (ax_roc, ax_pr) = m.plot(title="val/objects (msp)")
    roc_legend = [t.get_text() for t in ax_roc.get_legend().get_texts()]
    pr_legend = [t.get_text() for t in ax_pr.get_legend().get_texts()]
    assert f"AUROC {float(values['auroc']):.4f}, FPR95 {float(values['fpr95']):.4f}" in roc_legend
    assert f"AP {float(values['ap']):.4f}" in pr_legend
    assert f"AUROC {float(values['auroc']):.4f}" in ax_roc.get_title()
    assert f"AP {float(values['ap']):.4f}" in ax_pr.get_title()
    assert fig._suptitle.get_text() == "val/objects (msp)"
    # curves without the summary values still plot
    bare = roc_pr_figure({k: curves[k] for k in ("fpr", "tpr", "recall", "precision")})
    assert bare.axes[0].get_title() == "ROC"


def test_figure_plumbing_lives_in_one_module() -> None:
    import importlib.util

    import synthrel_lightning.figures as figures

    assert importlib.util.find_spec("synthrel_lightning.plots") is None
    assert {"new_figure", "save_figure", "figure_to_array", "save_rgb_png"} <= set(figures.__all__)


def test_iou_plot_marks_absent_classes_and_the_miou() -> None:
    m = SegmentationIoU(num_classes=4, class_names=["road", "car", "sky", "bus"])
    m.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 2]]))
    fig, ax = m.plot()
    assert len(ax.patches) == 3  # "bus" never occurs
    assert [t.get_text() for t in ax.texts] == ["absent"]
    assert ax.get_legend().get_texts()[0].get_text() == f"mIoU {float(m.compute()['miou']):.4f}"
