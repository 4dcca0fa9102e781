"""The ECE grid search goes beyond the grid's edges while the best temperature lies on one, and says so."""

from __future__ import annotations

import logging

import pytest
import torch

from synthrel_lightning.calibration import expected_calibration_error, fit_temperature
from synthrel_lightning.calibration.grid_search import is_replayable

K = 5


def synthetic(scale: float, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``true * scale`` with labels drawn from softmax(true): the calibrating T is ``scale``."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, K, generator=g) * 2.0
    labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    return true * scale, labels


def reference_best(z: torch.Tensor, y: torch.Tensor, temps: list[float]) -> float:
    """The T of ``temps`` with the lowest ECE, each ECE computed directly."""
    eces = [expected_calibration_error(z, y, temperature=t) for t in temps]
    return temps[min(range(len(temps)), key=eces.__getitem__)]


def test_an_under_confident_model_gets_its_optimum_below_the_paper_grid(caplog: pytest.LogCaptureFixture) -> None:
    """Optimum near 0.22: the paper grid alone returns its lower edge 0.5; the extended search finds 0.22."""
    z, y = synthetic(0.22, 30_000, seed=3)
    with caplog.at_level(logging.WARNING):
        fit = fit_temperature((z, y), method="ece_grid", pixels_per_image="all")
    assert fit.temperature < 0.5
    assert fit.temperature == pytest.approx(0.22, abs=0.03)
    # The T found is the best of a fine grid around it, not an edge.
    fine = [round(0.15 + 0.005 * i, 6) for i in range(31)]
    assert fit.temperature == pytest.approx(reference_best(z, y, fine), abs=0.0101)
    assert fit.searched is not None and fit.searched[0] < fit.temperature
    assert not fit.on_grid_edge
    assert fit.grid_notes and "lower edge of [0.5, 10)" in fit.grid_notes[0]
    assert any("lower edge" in r.getMessage() for r in caplog.records)
    assert fit.ece_after < expected_calibration_error(z, y, temperature=0.5)
    assert fit.ece_after == pytest.approx(expected_calibration_error(z, y, temperature=fit.temperature), rel=1e-6)
    # Without the extension the paper grid's edge comes back, reported as not a minimum.
    kept = fit_temperature((z, y), method="ece_grid", pixels_per_image="all", extend_grid=False)
    assert kept.temperature == 0.5 and kept.on_grid_edge
    assert "not a minimum" in kept.grid_notes[-1]


def test_an_over_confident_model_gets_its_optimum_above_a_small_grid() -> None:
    z, y = synthetic(3.0, 20_000, seed=4)
    fit = fit_temperature((z, y), method="ece_grid", grid=(0.5, 2.0, 0.01))
    assert fit.temperature > 2.0
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert "upper edge of [0.5, 2)" in fit.grid_notes[0]
    assert fit.searched == (0.5, 4.0)
    assert not fit.on_grid_edge


def test_a_one_shot_stream_is_searched_further_on_its_kept_pixels() -> None:
    """A generator cannot be streamed twice: the extension runs on the kept pixels (all of them here) and says so."""
    z, y = synthetic(0.22, 12_000, seed=5)
    batches = [(z[i : i + 3_000], y[i : i + 3_000]) for i in range(0, 12_000, 3_000)]
    assert is_replayable(batches) and not is_replayable(iter(batches))
    replayed = fit_temperature(batches, method="ece_grid", pixels_per_image="all")
    streamed = fit_temperature(iter(batches), method="ece_grid", pixels_per_image="all")
    assert streamed.temperature == replayed.temperature < 0.5
    assert streamed.extension_pixels == 12_000 and replayed.extension_pixels is None
    assert "subsample of 12,000" in streamed.grid_notes[-1]


def test_a_minimum_inside_the_grid_changes_nothing() -> None:
    z, y = synthetic(1.7, 10_000, seed=6)
    fit = fit_temperature((z, y), method="ece_grid")
    assert fit.grid_notes == () and fit.searched == (0.5, 10.0) and not fit.on_grid_edge
