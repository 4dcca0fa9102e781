"""Calibration at scale: the vectorised ECE grid against the direct one, the per-frame sample, the tool's report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_calibration_callback import trained_checkpoint, write_recipe

from synthrel_lightning.calibration import fit_temperature, temperature_grid
from synthrel_lightning.calibration import grid as grid_module
from synthrel_lightning.calibration.grid import grid_bin_sums, grid_bin_sums_reference
from synthrel_lightning.calibration.sampling import frame_pixels
from synthrel_lightning.commands.calibrate import main
from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.metrics.functional import ece_from_sums

K = 19


def overconfident(n: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pixels of K-class logits ``true * scale`` with labels drawn from softmax(true): T ~ scale calibrates."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, K, generator=g) * 2.5
    labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    return true * scale, labels


def on_bin_edges(temperatures: list[float], num_bins: int = 15) -> torch.Tensor:
    """Logits whose top-1 confidence at one of ``temperatures`` is a bin edge b / num_bins (in exact arithmetic).

    The top class at 0 and the K - 1 others tied at ``-g``: confidence 1 / (1 + (K-1) exp(-g/T)).
    Also pixels with 3 and 5 classes tied on top (1/3 and 1/5, edges at every T).
    """
    rows = []
    for t in temperatures:
        for b in range(1, num_bins):
            g = -t * math.log((num_bins / b - 1) / (K - 1))
            rows.append([0.0] + [-g] * (K - 1))
    for ties in (3, 5):
        rows.append([0.0] * ties + [-500.0] * (K - ties))
    return torch.tensor(rows, dtype=torch.float32)


def test_vectorised_grid_bins_every_pixel_as_the_direct_computation() -> None:
    temps = torch.cat([temperature_grid(), torch.ones(1, dtype=torch.float64)])
    edges = on_bin_edges([float(temps[i]) for i in (0, 50, 187, 500, 949)] + [1.0])
    z, y = overconfident(1_500, 2.3, seed=0)
    z = torch.cat([z, edges.repeat(5, 1)])
    y = torch.cat([y, torch.arange(edges.shape[0] * 5) % K])
    direct = grid_bin_sums_reference(z, y, temps)
    fast = grid_bin_sums(z, y, temps)
    # Counts and correct counts per (T, bin) are exact integers: identical.
    assert torch.equal(fast[:, 0], direct[:, 0]) and torch.equal(fast[:, 2], direct[:, 2])
    assert torch.allclose(fast[:, 1], direct[:, 1], rtol=1e-6, atol=0)
    ece_fast, ece_direct = ece_from_sums(fast), ece_from_sums(direct)
    assert (ece_fast - ece_direct).abs().max() < 1e-7
    assert int(ece_fast[:-1].argmin()) == int(ece_direct[:-1].argmin())
    # Small chunks (many chunk boundaries) give the same bins.
    small = grid_bin_sums(z, y, temps, max_elements=5_000)
    assert torch.equal(small[:, 0], direct[:, 0]) and torch.equal(small[:, 2], direct[:, 2])


def test_edge_pairs_need_the_direct_recomputation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without recomputing pairs near a bin edge, pixels on an edge land in another bin than the direct formula's."""
    temps = temperature_grid()
    z = on_bin_edges([float(t) for t in temps[::50]]).repeat(3, 1)
    y = torch.zeros(z.shape[0], dtype=torch.long)
    direct = grid_bin_sums_reference(z, y, temps)
    assert torch.equal(grid_bin_sums(z, y, temps)[:, 0], direct[:, 0])
    monkeypatch.setattr(grid_module, "EDGE_MARGIN", 0.0)
    assert not torch.equal(grid_bin_sums(z, y, temps)[:, 0], direct[:, 0])


def relis_ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Transcribed from relis uncertainty_helpers.py, _ECELoss.forward (GenVal's relis/ folder)."""
    softmaxes = torch.softmax(logits.double(), dim=1)
    confidences, predictions = torch.max(softmaxes, 1)
    accuracies = predictions.eq(labels)
    bin_boundaries = torch.linspace(0, 1, n_bins + 1)
    ece = torch.zeros(1)
    for bin_lower, bin_upper in zip(bin_boundaries[:-1], bin_boundaries[1:]):
        in_bin = confidences.gt(bin_lower.item()) * confidences.le(bin_upper.item())
        prop_in_bin = in_bin.float().mean()
        if prop_in_bin.item() > 0:
            accuracy_in_bin = accuracies[in_bin].float().mean()
            avg_confidence_in_bin = confidences[in_bin].mean()
            ece += torch.abs(avg_confidence_in_bin - accuracy_in_bin) * prop_in_bin
    return float(ece)


def relis_ece_grid(logits: torch.Tensor, labels: torch.Tensor, temps: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """:func:`relis_ece` of ``logits / t`` for every ``t``, the same bins ((lower, upper]) and weights, vectorised."""
    t = torch.as_tensor(temps, dtype=torch.float64)[:, None, None]
    confidences, predictions = torch.max(torch.softmax(logits.double()[None] / t, dim=2), 2)
    accuracies = predictions.eq(labels[None]).double()
    bin_boundaries = torch.linspace(0, 1, n_bins + 1)
    ece = torch.zeros(len(temps), dtype=torch.float64)
    for bin_lower, bin_upper in zip(bin_boundaries[:-1], bin_boundaries[1:]):
        in_bin = (confidences.gt(bin_lower.item()) * confidences.le(bin_upper.item())).double()
        count = in_bin.sum(1)
        gap = ((confidences * in_bin).sum(1) - (accuracies * in_bin).sum(1)).abs() / count.clamp_min(1)
        ece += torch.where(count > 0, gap * count / logits.shape[0], 0.0)
    return ece.numpy()


@pytest.mark.parametrize(("scale", "seed"), [(2.3, 1), (0.8, 2), (4.0, 3)])
def test_fitted_temperature_is_the_exhaustive_grids(scale: float, seed: int) -> None:
    # the reference is relis' own ECE (find_best_temperature_grid_search's criterion), not the library's
    z, y = overconfident(1_500, scale, seed)
    temps = np.arange(0.5, 10, 0.01)  # relis' grid
    exhaustive = relis_ece_grid(z, y, temps)
    # the loop, vectorised (the loop weighs bins in float32: agreement to that precision)
    assert exhaustive[100] == pytest.approx(relis_ece(z / temps[100], y), abs=1e-7)
    fit = fit_temperature((z, y), method="ece_grid", pixels_per_image="all")
    assert fit.temperature == pytest.approx(float(temps[int(exhaustive.argmin())]), abs=1e-9)
    assert fit.ece_after == pytest.approx(float(exhaustive.min()), abs=1e-6)
    assert fit.ece_before == pytest.approx(relis_ece(z, y), abs=1e-6)


def frames(n: int, h: int = 12, w: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` frames of logits (n,K,h,w) and labels with void and OOD pixels (fewer labelled in later frames)."""
    z, y = overconfident(n * h * w, 2.0, seed)
    z = z.reshape(n, h, w, K).permute(0, 3, 1, 2).contiguous()
    y = y.reshape(n, h, w).clone()
    for i in range(n):
        y[i].view(-1)[: 7 * i] = VOID_ID
    y[:, 0, :3] = OOD_ID
    return z, y


def batched(z: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(z[i : i + size], y[i : i + size]) for i in range(0, z.shape[0], size)]


def test_per_frame_sample_is_seeded_capped_and_independent_of_batching() -> None:
    z, y = frames(6)
    labelled = [int((y[i] < K).sum()) for i in range(6)]
    cap = 90
    a = list(frame_pixels(batched(z, y, 1), cap, seed=7))
    b = list(frame_pixels(batched(z, y, 4), cap, seed=7))
    c = list(frame_pixels(batched(z, y, 4), cap, seed=8))
    assert [f.index for f in a] == list(range(6)) and [f.labelled for f in a] == labelled
    for fa, fb, fc, n in zip(a, b, c, labelled):
        assert fa.logits.shape == (min(cap, n), K) and torch.equal(fa.logits, fb.logits)
        assert torch.equal(fa.target, fb.target) and bool((fa.target < K).all())
        if n > cap:
            assert not torch.equal(fa.logits, fc.logits)
        # sampled pixels are distinct pixels of that frame
        frame = z[fa.index].permute(1, 2, 0).reshape(-1, K)
        matches = (fa.logits[:, None, :] == frame[None]).all(-1)
        assert bool((matches.sum(1) == 1).all()) and int(matches.any(0).sum()) == fa.logits.shape[0]
    assert sum(f.logits.shape[0] for f in a) == sum(min(cap, n) for n in labelled)


@pytest.mark.parametrize("method", ["ece_grid", "nll"])
def test_a_sample_covering_every_pixel_fits_as_every_pixel(method: str) -> None:
    z, y = frames(5)
    grid = (0.5, 6.0, 0.01)
    full = fit_temperature(batched(z, y, 2), method=method, grid=grid, pixels_per_image="all")
    covering = fit_temperature(batched(z, y, 3), method=method, grid=grid, pixels_per_image=120)
    assert covering.as_dict() == {**full.as_dict(), "pixels_per_image": 120}
    sampled = fit_temperature(batched(z, y, 2), method=method, grid=grid, pixels_per_image=60, seed=3)
    assert sampled.frames == 5 and sampled.pixels == full.pixels
    assert sampled.sampled_pixels == sampled.fit_pixels == 5 * 60  # every frame has more than 60 labelled
    assert sampled.ece_before != full.ece_before


def test_nll_subsamples_the_per_frame_sample() -> None:
    z, y = frames(5)
    fit = fit_temperature(batched(z, y, 2), method="nll", pixels_per_image=60, max_pixels=100)
    assert (fit.sampled_pixels, fit.fit_pixels, fit.pixels_per_image) == (300, 100, 60)
    with pytest.raises(ValueError, match="pixels_per_image must be a positive int or 'all', got 0"):
        fit_temperature(batched(z, y, 2), pixels_per_image=0)
    with pytest.raises(ValueError, match="got 'some'"):
        fit_temperature(batched(z, y, 2), pixels_per_image="some")  # type: ignore[arg-type]


def test_calibrate_tool_shows_progress_over_frames_and_reports_the_sample(tmp_path: Path, capsys) -> None:
    _, source = trained_checkpoint(tmp_path)
    out = tmp_path / "calibrated.ckpt"
    recipe = write_recipe(tmp_path)
    # as in the config.yaml a fit run saves (LightningCLI's fit options)
    recipe.write_text(recipe.read_text() + "ckpt_path: null\nweights_only: null\n")
    args = ["--config", str(recipe), "--ckpt_path", str(source), "--set_name", "clean"]
    report = main([*args, "--output", str(out), "--method", "ece_grid", "--pixels_per_image", "100", "--seed", "5"])
    captured = capsys.readouterr()
    assert "collecting logits (clean)" in captured.err and "/12 [" in captured.err and "frame" in captured.err
    fit = report.fit
    assert (fit.frames, fit.pixels, fit.sampled_pixels, fit.fit_pixels) == (12, 12 * 15 * 16, 1_200, 1_200)
    assert "pixels used: 1,200 of 2,880 labelled (at most 100 per frame, 12 frames)" in captured.out
    assert f"temperature: {fit.temperature:.6g} (ece_grid) on set clean" in captured.out
    assert f"{fit.ece_before:.4f} before -> {fit.ece_after:.4f} after" in captured.out
    assert "s on cpu" in captured.out and f"calibrated checkpoint: {out}" in captured.out
    saved = torch.load(out, weights_only=True)["calibration"]
    assert saved["pixels_per_image"] == 100 and saved["sampled_pixels"] == 1_200
    again = main([*args, "--output", str(out), "--method", "ece_grid", "--pixels_per_image", "100", "--seed", "5"])
    assert again.fit == fit  # seeded
    every = main([*args, "--output", str(out), "--method", "ece_grid", "--pixels_per_image", "all"])
    assert every.fit.fit_pixels == 2_880 and "(every labelled pixel of 12 frames)" in capsys.readouterr().out
