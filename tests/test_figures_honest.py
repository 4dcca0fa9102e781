"""Figures that say what they show: reliability gaps that hide nothing, intervals with enough digits, PR baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthrel_lightning.correlation.plots import correlation_label
from synthrel_lightning.correlation.statistics import Correlation, format_correlation, format_interval
from synthrel_lightning.metrics.plots import reliability_diagram, roc_pr_figure


def _sums() -> torch.Tensor:
    """Five bins of ten: over-confident low bins, under-confident high bins (accuracy above confidence)."""
    count = torch.tensor([0, 0, 0, 0, 0, 100, 100, 100, 100, 100], dtype=torch.float64)
    conf = count * torch.tensor([0, 0, 0, 0, 0, 0.55, 0.65, 0.75, 0.85, 0.95], dtype=torch.float64)
    acc = torch.tensor([0, 0, 0, 0, 0, 0.30, 0.40, 0.95, 0.97, 0.99], dtype=torch.float64)
    return torch.stack([count, conf, count * acc])


def _rgba_fill(patch) -> tuple[float, ...] | None:
    return tuple(patch.get_facecolor()) if patch.get_fill() and patch.get_facecolor()[3] > 0 else None


def test_reliability_gaps_never_cover_the_accuracy_bars_and_every_colour_is_in_the_legend() -> None:
    sums = _sums()
    fig, ax = reliability_diagram(sums)
    fig.canvas.draw()
    count, conf, correct = sums
    acc = (correct / count.clamp_min(1)).numpy()
    mean_conf = (conf / count.clamp_min(1)).numpy()
    containers = {c.get_label(): c for c in ax.containers}
    accuracy = containers["accuracy"]
    filled = np.flatnonzero(count.numpy() > 0)
    assert [round(p.get_height(), 6) for p in accuracy] == [round(float(a), 6) for a in acc[filled]]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    for label, container in containers.items():
        assert label in legend, f"{label!r} drawn but not in the legend {legend}"
        if container is accuracy:
            continue
        for patch in container:
            lo, hi = sorted((patch.get_y(), patch.get_y() + patch.get_height()))
            x = patch.get_x() + patch.get_width() / 2
            i = int(x * len(acc))
            # A gap patch inside an accuracy bar (under-confident bins) must not be filled over it.
            if lo < acc[i] - 1e-9:
                assert _rgba_fill(patch) is None, f"{label}: a filled patch covers the accuracy bar of bin {i}"
            assert lo == pytest.approx(min(acc[i], mean_conf[i])) and hi == pytest.approx(max(acc[i], mean_conf[i]))
    assert any("under" in label for label in legend) and any("over" in label for label in legend)


def test_pr_panel_draws_the_no_skill_baseline_at_the_prevalence() -> None:
    recall = np.linspace(0, 1, 11)
    curves = {
        "fpr": np.linspace(0, 1, 11),
        "tpr": np.linspace(0, 1, 11),
        "recall": recall,
        "precision": np.full(11, 0.02),
        "ap": 0.013,
        "prevalence": 0.0125,
    }
    fig = roc_pr_figure(curves)
    ax_pr = fig.axes[1]
    lines = {line.get_label(): line for line in ax_pr.get_lines()}
    label = next(k for k in lines if k.startswith("no skill"))
    assert "0.0125" in label
    assert np.allclose(lines[label].get_ydata(), 0.0125)
    assert label in {t.get_text() for t in ax_pr.get_legend().get_texts()}


def test_pr_baseline_from_real_dataset_curves() -> None:
    """``PixelOODMetrics.curves()`` end at the all-pixels threshold: the prevalence is read there."""
    from synthrel_lightning.metrics import PixelOODMetrics

    g = torch.Generator().manual_seed(0)
    ood = (torch.rand(2, 32, 32, generator=g) < 0.05).long()
    scores = torch.rand(2, 32, 32, generator=g) + 0.3 * ood
    metric = PixelOODMetrics()
    metric.update(scores, ood)
    fig = roc_pr_figure(metric.curves())
    (line,) = [line for line in fig.axes[1].get_lines() if line.get_label().startswith("no skill")]
    assert np.allclose(line.get_ydata(), float(ood.float().mean()))


def test_pr_panel_without_a_known_prevalence_draws_no_made_up_baseline() -> None:
    curves = {"fpr": [0, 1], "tpr": [0, 1], "recall": [1, 0], "precision": [0.5, 1]}
    fig = roc_pr_figure(curves)
    assert not any(line.get_label().startswith("no skill") for line in fig.axes[1].get_lines())


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.12, 0.97, "[0.12, 0.97]"),
        (0.99912, 0.99998, "[0.9991, 1.0000]"),
        (0.999991, 0.999999, "[0.999991, 0.999999]"),
        (1.0, 1.0, "undefined (the interval is a single point, 1)"),
    ],
)
def test_intervals_print_with_enough_digits_to_tell_their_ends_apart(low: float, high: float, expected: str) -> None:
    assert format_interval(low, high, digits=2) == expected


def test_a_near_one_interval_is_not_printed_as_a_point() -> None:
    c = Correlation("pearson", 4, coefficient=0.99996, ci_low=0.9991, ci_high=0.99999, p_value=0.001)
    c.interval, c.warning = "fisher_z", "only 4 models"
    assert "[1.00, 1.00]" not in correlation_label(c) and "[0.9991, 1.0000]" in correlation_label(c)
    assert "[1.000, 1.000]" not in format_correlation(c) and "[0.9991, 1.0000]" in format_correlation(c)
