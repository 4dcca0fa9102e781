"""Temperature fitting: recovery of a known temperature, streaming, exact ECE, its report, errors, logit collection."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.classification import multiclass_calibration_error

from synthrel_lightning.calibration import (
    collect_logits,
    ece_by_temperature,
    expected_calibration_error,
    fit_temperature,
    temperature_grid,
)
from synthrel_lightning.labels import OOD_ID, VOID_ID

K = 5


def synthetic(scale: float, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``true * scale`` with labels drawn from softmax(true): the calibrating T is ``scale``."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, K, generator=g) * 2.0
    labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    return true * scale, labels


def as_images(logits: torch.Tensor, labels: torch.Tensor, batch: int, h: int, w: int, void_every: int = 7):
    """Reshape (N,K) pixels into (B,K,H,W) batches, adding void and OOD pixels that must be ignored."""
    per = batch * h * w
    out = []
    for start in range(0, logits.shape[0] - per + 1, per):
        z = logits[start : start + per].reshape(batch, h, w, K).permute(0, 3, 1, 2).contiguous()
        y = labels[start : start + per].reshape(batch, h, w).clone()
        z_noise = z.clone()
        z_noise.view(-1)[:: void_every * K] += 50.0  # garbage logits on pixels marked void below
        y.view(-1)[::void_every] = VOID_ID
        y.view(-1)[3::11] = OOD_ID
        out.append((z_noise, y))
    return out


@pytest.mark.parametrize("scale", [2.5, 0.6])
def test_nll_recovers_a_known_temperature(scale: float) -> None:
    logits, labels = synthetic(scale, 60_000)
    batches = [(logits[i : i + 7_000], labels[i : i + 7_000]) for i in range(0, 60_000, 7_000)]
    t = fit_temperature(batches, method="nll").temperature
    assert t == pytest.approx(scale, rel=0.04)


@pytest.mark.parametrize("scale", [2.5, 0.7])
def test_ece_grid_recovers_a_known_temperature_and_lowers_ece(scale: float) -> None:
    logits, labels = synthetic(scale, 24_000, seed=1)
    t = fit_temperature((logits, labels), method="ece_grid").temperature
    assert t == pytest.approx(scale, rel=0.1)
    before = expected_calibration_error(logits, labels)
    after = expected_calibration_error(logits, labels, temperature=t)
    assert after < 0.5 * before
    # Grid values only: start + i * step.
    assert round((t - 0.5) / 0.01, 6) == round((t - 0.5) / 0.01)


@pytest.mark.parametrize("method", ["ece_grid", "nll"])
def test_fit_reports_the_ece_before_and_after_on_the_pixels_it_used(method: str) -> None:
    logits, labels = synthetic(2.5, 20_000, seed=5)
    fit = fit_temperature((logits, labels), method=method, max_pixels=5_000)
    before = expected_calibration_error(logits, labels)
    after = expected_calibration_error(logits, labels, temperature=fit.temperature)
    assert fit.method == method and fit.num_bins == 15 and fit.pixels == 20_000
    if method == "ece_grid":  # every pixel (one frame of 20,000): the exact values, up to float rounding
        assert fit.fit_pixels == 20_000
        assert fit.ece_before == pytest.approx(before, rel=1e-7)
        assert fit.ece_after == pytest.approx(after, rel=1e-7)
    else:  # the uniform subsample: close to the full-set values
        assert fit.fit_pixels == 5_000
        assert fit.ece_before == pytest.approx(before, abs=0.02)
        assert fit.ece_after == pytest.approx(after, abs=0.02)
    assert fit.ece_after < 0.5 * fit.ece_before
    assert fit.as_dict() == {
        "temperature": fit.temperature,
        "method": method,
        "pixels": 20_000,
        "fit_pixels": fit.fit_pixels,
        "ece_before": fit.ece_before,
        "ece_after": fit.ece_after,
        "num_bins": 15,
        "sampled_pixels": 20_000,
        "frames": 1,
        "pixels_per_image": 20_000,
        "searched": (0.5, 10.0) if method == "ece_grid" else None,
        "grid_notes": (),
        "extension_pixels": None,
    }


def test_streamed_image_batches_equal_collected_pixels_and_skip_void_and_ood() -> None:
    logits, labels = synthetic(1.8, 12 * 8 * 10 * 4, seed=2)
    batches = as_images(logits, labels, batch=4, h=8, w=10)
    flat_z = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, K) for z, _ in batches])
    flat_y = torch.cat([y.reshape(-1) for _, y in batches])
    keep = flat_y < K
    grid = (0.5, 4.0, 0.05)
    streamed = fit_temperature(iter(batches), method="ece_grid", grid=grid).temperature
    collected = fit_temperature((flat_z[keep], flat_y[keep]), method="ece_grid", grid=grid).temperature
    assert streamed == collected
    # The void pixels carry large garbage logits: had they counted, the fit would differ.
    assert streamed != fit_temperature((flat_z, flat_y.clamp(max=K - 1)), method="ece_grid", grid=grid).temperature
    nll_streamed = fit_temperature(iter(batches), method="nll").temperature
    nll_collected = fit_temperature((flat_z[keep], flat_y[keep]), method="nll").temperature
    assert nll_streamed == pytest.approx(nll_collected, rel=1e-5)


def test_ece_matches_torchmetrics_on_every_temperature() -> None:
    logits, labels = synthetic(3.0, 5_000, seed=3)
    temps = [0.5, 1.0, 2.37, 6.0]
    ours = ece_by_temperature([(logits[:2_000], labels[:2_000]), (logits[2_000:], labels[2_000:])], temps)
    bounds = torch.linspace(0, 1, 16, dtype=torch.float64)
    for t, value in zip(temps, ours.tolist()):
        probs = torch.softmax(logits.double() / t, 1)
        # torchmetrics sums in float32 (errors ~1e-6 with confidences near 1) ...
        ref = multiclass_calibration_error(probs, labels, num_classes=K, n_bins=15, norm="l1")
        assert value == pytest.approx(ref.item(), abs=2e-5)
        # ... so also compare with the definition evaluated in float64.
        conf, pred = probs.max(1)
        hit = (pred == labels).double()
        bins = (torch.bucketize(conf, bounds, right=True) - 1).clamp(0, 14)
        exact = sum(abs(hit[bins == b].sum() - conf[bins == b].sum()) for b in range(15)) / len(labels)
        assert value == pytest.approx(float(exact), abs=1e-7)


def test_nll_subsample_is_seeded_and_capped() -> None:
    logits, labels = synthetic(2.0, 40_000, seed=4)
    batches = [(logits[i : i + 5_000], labels[i : i + 5_000]) for i in range(0, 40_000, 5_000)]
    a = fit_temperature(batches, method="nll", max_pixels=3_000, seed=11).temperature
    b = fit_temperature(batches, method="nll", max_pixels=3_000, seed=11).temperature
    c = fit_temperature(batches, method="nll", max_pixels=3_000, seed=12).temperature
    full = fit_temperature(batches, method="nll").temperature
    assert a == b and a != c
    assert a == pytest.approx(2.0, rel=0.15) and full == pytest.approx(2.0, rel=0.05)


def test_temperature_grid_is_the_papers() -> None:
    grid = temperature_grid()
    assert grid.numel() == 950
    assert grid[0].item() == pytest.approx(0.5) and grid[-1].item() == pytest.approx(9.99)
    with pytest.raises(ValueError, match="grid"):
        temperature_grid((1.0, 0.5, 0.01))


@pytest.mark.parametrize("method", ["nll", "ece_grid"])
def test_errors_for_empty_and_all_void_input(method: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_temperature([], method=method)
    z = torch.randn(2, K, 3, 3)
    void = torch.full((2, 3, 3), VOID_ID)
    void[0, 0, 0] = OOD_ID
    with pytest.raises(ValueError, match="no pixel with a train id"):
        fit_temperature([(z, void)], method=method)


def test_errors_for_bad_input() -> None:
    z = torch.randn(2, K, 3, 3)
    y = torch.zeros(2, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="method"):
        fit_temperature((z, y), method="brier")
    with pytest.raises(ValueError, match="do not match"):
        fit_temperature((z, y[:, :2]))
    with pytest.raises(ValueError, match="outside"):
        fit_temperature((z, y + 9))
    with pytest.raises(ValueError, match="classes"):
        fit_temperature([(z, y), (torch.randn(2, K + 1, 3, 3), y)])
    bad = z.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature((bad, y))


class ScaledLinear(nn.Module):
    """A per-pixel linear classifier following the segmenter contract (temperature buffer, raw_logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, K, 1)
        self.register_buffer("temperature", torch.full((), 4.0))
        self.dropout = nn.Dropout(0.5)

    def raw_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.raw_logits(images) / self.temperature


class Frames(Dataset):
    def __init__(self, n: int, as_dict: bool = True) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 6, 8, generator=g)
        self.labels = torch.randint(0, K, (n, 6, 8), generator=g)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self.as_dict:
            return {"image": self.images[i], "label": self.labels[i], "name": f"f{i}"}
        return self.images[i], self.labels[i]


def test_collect_logits_yields_raw_eval_logits_and_restores_mode() -> None:
    model = ScaledLinear().train()
    loader = DataLoader(Frames(10), batch_size=4)
    pairs = list(collect_logits(model, loader))
    assert model.training
    assert [z.shape[0] for z, _ in pairs] == [4, 4, 2]
    expected = model.conv(Frames(10).images[:4]).detach()  # eval mode: no dropout, no temperature
    assert torch.allclose(pairs[0][0], expected, atol=1e-6)
    assert not pairs[0][0].requires_grad
    assert len(list(collect_logits(model, loader, max_batches=2))) == 2


def test_collect_logits_accepts_plain_modules_and_tuple_batches() -> None:
    model = nn.Conv2d(3, K, 1)
    pairs = list(collect_logits(model, DataLoader(Frames(3, as_dict=False), batch_size=3), to_cpu=True))
    assert torch.allclose(pairs[0][0], model(Frames(3).images).detach(), atol=1e-6)
    with pytest.raises(KeyError, match="label"):
        list(collect_logits(model, [{"image": torch.zeros(1, 3, 2, 2)}]))


def test_collect_logits_feeds_fit_temperature_end_to_end() -> None:
    model = ScaledLinear()
    with torch.no_grad():
        model.conv.weight.mul_(3.0)
    t = fit_temperature(collect_logits(model, DataLoader(Frames(16), batch_size=4)), method="nll").temperature
    # Labels are independent of the images: the calibrated prediction is near uniform, hence T >> 1.
    assert t > 3.0
