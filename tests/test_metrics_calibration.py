"""CalibrationMetrics against direct per-pixel computations and torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from synthrel_lightning.metrics import CalibrationMetrics


def make_batch(seed: int, scale: float, k: int = 7, n: int = 2, h: int = 48, w: int = 64):
    g = torch.Generator().manual_seed(seed)
    logits = F.interpolate(torch.randn(n, k, h // 4, w // 4, generator=g) * scale, size=(h, w), mode="bilinear")
    logits = logits + torch.randn(logits.shape, generator=g) * 0.5
    # targets agree with the argmax most of the time, so the network is over/under-confident, not random
    target = logits.argmax(1)
    flip = torch.rand(n, h, w, generator=g) < 0.2
    target = torch.where(flip, torch.randint(0, k, (n, h, w), generator=g), target)
    target[:, :3] = 255
    target[:, 3:5] = 254
    target[:, 5, :10] = k + 3  # ids >= K are ignored too
    return logits, target


def direct(logits: torch.Tensor, target: torch.Tensor, num_bins: int = 15) -> dict[str, float]:
    k = logits.shape[1]
    valid = target < k
    z = logits.movedim(1, -1)[valid].double()
    y = target[valid]
    p = z.softmax(-1)
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    ece = 0.0
    for b in range(num_bins):
        sel = (conf >= b / num_bins) & ((conf < (b + 1) / num_bins) if b < num_bins - 1 else (conf <= 1))
        if sel.any():
            ece += sel.double().mean().item() * abs(correct[sel].mean().item() - conf[sel].mean().item())
    order = torch.argsort(conf)
    ace = 0.0
    for chunk in np.array_split(order.numpy(), num_bins):
        ace += len(chunk) / len(order) * abs(correct[chunk].mean().item() - conf[chunk].mean().item())
    onehot = F.one_hot(y, k).double()
    return {
        "ece": ece,
        "adaptive_ece": ace,
        "brier": ((p - onehot) ** 2).sum(-1).mean().item(),
        "nll": F.nll_loss(p.log(), y).item(),
        "accuracy": correct.mean().item(),
    }


@pytest.mark.parametrize("scale", [1.0, 4.0, 12.0])
def test_matches_direct_computation(scale: float) -> None:
    batches = [make_batch(seed, scale) for seed in range(3)]
    m = CalibrationMetrics()
    for z, t in batches:
        m.update(z, t)
    out = m.compute()
    ref = direct(torch.cat([z for z, _ in batches]), torch.cat([t for _, t in batches]))
    for key in ("ece", "brier", "nll", "accuracy"):
        assert math.isclose(float(out[key]), ref[key], rel_tol=1e-5, abs_tol=1e-6), (key, float(out[key]), ref[key])
    # documented approximation of the equal-mass ECE
    assert abs(float(out["adaptive_ece"]) - ref["adaptive_ece"]) < 1e-3, (float(out["adaptive_ece"]), ref)


def test_ece_agrees_with_torchmetrics() -> None:
    z, t = make_batch(7, 4.0)
    m = CalibrationMetrics()
    m.update(z, t)
    valid = t < z.shape[1]
    tm = MulticlassCalibrationError(num_classes=z.shape[1], n_bins=15, norm="l1")
    tm.update(z.movedim(1, -1)[valid], t[valid])
    assert math.isclose(float(m.compute()["ece"]), float(tm.compute()), rel_tol=1e-4)


def test_adaptive_ece_on_very_confident_pixels() -> None:
    # most confidences within 1e-4 of 1: where a uniform confidence histogram would lump everything
    z, t = make_batch(3, 40.0)
    m = CalibrationMetrics()
    m.update(z, t)
    ref = direct(z, t)
    assert abs(float(m.compute()["adaptive_ece"]) - ref["adaptive_ece"]) < 1e-3


def test_reliability_diagram(tmp_path) -> None:
    z, t = make_batch(0, 4.0)
    m = CalibrationMetrics()
    m.update(z, t)
    fig = m.reliability_diagram(title="demo")
    assert len(fig.axes) == 2  # the diagram and its pixel-share axis
    assert fig.axes[0].get_title() == "demo"
    assert f"ECE {float(m.compute()['ece']):.4f}" in fig.axes[0].texts[0].get_text()
    path = tmp_path / "reliability.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000


def test_errors() -> None:
    m = CalibrationMetrics()
    with pytest.raises(ValueError, match="does not match"):
        m.update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        m.update(torch.zeros(3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    m.update(torch.zeros(1, 3, 4, 4), torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="no valid"):
        m.compute()


def test_non_finite_logits_raise_with_count_and_location_and_leave_the_state_untouched() -> None:
    z, t = make_batch(1, 4.0)
    m = CalibrationMetrics()
    m.update(z, t)
    before = m.compute()
    bad = z.clone()
    bad[0, :2, 10, 7] = float("nan")  # two NaN logits at one labelled pixel
    bad[1, 3, 20, 30] = float("inf")
    bad[0, :, 0, 0] = float("nan")  # a void pixel (row 0): not counted, not an error
    with pytest.raises(ValueError) as err:
        m.update(bad, t)
    message = str(err.value)
    assert message.startswith(f"CalibrationMetrics: 3 of {z.numel()} logits at counted pixels are NaN or infinite")
    assert "(2 NaN, 1 infinite) at 2 pixel(s) in batch item(s) [0, 1]" in message
    assert "the first at batch item 0, row 10, column 7" in message
    after = m.compute()
    assert all(float(after[k]) == float(before[k]) for k in before)
    nan_on_void = z.clone()
    nan_on_void[:, :, 0] = float("nan")
    m.update(nan_on_void, t)
    assert math.isfinite(float(m.compute()["ece"]))
