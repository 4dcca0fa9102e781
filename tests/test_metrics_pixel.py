"""PixelOODMetrics (binned and exact) against scikit-learn on realistic score maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from synthrel_lightning.metrics import NotComputableError, PixelOODMetrics, pixel_ood_metrics
from synthrel_lightning.scores import ood_score


def realistic_batch(seed: int, n: int = 4, h: int = 96, w: int = 192, k: int = 19) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from a random conv net, upsampled like a segmenter's, with ~2% OOD pixels in blobs and void."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, k, 3, padding=1)
    )
    image = F.avg_pool2d(torch.randn(n, 3, h // 4 + 4, w // 4 + 4, generator=g), 5, stride=1)
    with torch.no_grad():
        logits = net(image) * 70.0
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    blobs = F.interpolate(torch.rand(n, 1, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear")[:, 0]
    ood = blobs > torch.quantile(blobs.flatten(), 0.98)
    # OOD pixels: flatter, lower logits, plus pixel noise so the classes overlap
    logits = torch.where(ood[:, None], logits * 0.5 - 1.0, logits)
    logits = logits + torch.randn(logits.shape, generator=g) * 1.5
    target = ood.long()
    target[:, : h // 10] = 255
    return logits, target


def sklearn_reference(scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    valid = target != 255
    y = target[valid].numpy()
    s = scores[valid].double().numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "ap": average_precision_score(y, s),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95)]),
    }


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [realistic_batch(seed) for seed in range(3)]


TOL = {"auroc": 1e-3, "ap": 5e-3, "fpr95": 5e-3}


@pytest.mark.parametrize("score", ["msp", "energy", "max_logit"])
def test_binned_and_exact_match_sklearn(batches, score: str) -> None:
    scores = [ood_score(score, z) for z, _ in batches]
    targets = [t for _, t in batches]
    all_s, all_t = torch.cat(scores), torch.cat(targets)
    if score == "energy":
        lo, hi = float(all_s.min()), float(all_s.max())
        assert lo < -20 and hi > -3, (lo, hi)  # an unbounded, realistic range
    ref = sklearn_reference(all_s, all_t)
    binned, exact = PixelOODMetrics(), PixelOODMetrics(mode="exact")
    for s, t in zip(scores, targets):
        binned.update(s, t)
        exact.update(s, t)
    rb, re_ = binned.compute(), exact.compute()
    for key in TOL:
        assert abs(float(re_[key]) - ref[key]) < 1e-9, (key, float(re_[key]), ref[key])
        assert abs(float(rb[key]) - ref[key]) <= TOL[key], (key, float(rb[key]), ref[key])
    assert 0.5 < ref["auroc"] < 0.999  # a non-trivial problem
    assert abs(float(rb["best_f1"]) - float(re_["best_f1"])) < 5e-3


def test_ties_and_float16_quantised_scores(batches) -> None:
    # float16 rounding creates many tied scores; SMIYC's own files store float16 maps
    scores = torch.cat([ood_score("energy", z) for z, _ in batches]).half().float()
    target = torch.cat([t for _, t in batches])
    assert scores.unique().numel() < scores.numel() // 10
    ref = sklearn_reference(scores, target)
    exact = pixel_ood_metrics(scores, target)
    m = PixelOODMetrics()
    m.update(scores, target)
    out = m.compute()
    for key in TOL:
        assert abs(float(exact[key]) - ref[key]) < 1e-9
        assert abs(float(out[key]) - ref[key]) <= TOL[key]


def test_score_range_linear_bins(batches) -> None:
    scores = torch.cat([ood_score("msp", z) for z, _ in batches])
    target = torch.cat([t for _, t in batches])
    ref = sklearn_reference(scores, target)
    m = PixelOODMetrics(score_range=(0.0, 1.0), num_bins=100_000)
    m.update(scores, target)
    out = m.compute()
    for key in TOL:
        assert abs(float(out[key]) - ref[key]) <= TOL[key], key


@pytest.mark.parametrize("kwargs", [{}, {"score_range": (-40.0, 10.0), "num_bins": 5000}, {"mode": "exact"}])
def test_best_f1_threshold_reproduces_best_f1(batches, kwargs) -> None:
    scores = torch.cat([ood_score("energy", z) for z, _ in batches])
    target = torch.cat([t for _, t in batches])
    m = PixelOODMetrics(**kwargs)
    m.update(scores, target)
    out = m.compute()
    valid = target != 255
    pred = scores[valid] >= float(out["best_f1_threshold"])
    y = target[valid] == 1
    tp = (pred & y).sum().item()
    f1 = 2 * tp / (pred.sum().item() + y.sum().item())
    assert abs(f1 - float(out["best_f1"])) < 1e-9


def test_float_bins_are_monotone_with_exact_edges() -> None:
    m = PixelOODMetrics()
    values = torch.tensor([-1e12, -3e4, -30.0, -1.5, -1e-3, -1e-12, -0.0, 0.0, 1e-12, 1e-6, 0.25, 1.0, 7.0, 1e5, 1e12])
    idx = m.bin_index(values)
    assert torch.all(idx[1:] >= idx[:-1])
    assert idx.min() >= 0 and idx.max() < m.num_bins
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(1, m.num_bins, (200,), generator=g).tolist() + [m.num_bins // 2, m.num_bins // 2 + 1]:
        edge = torch.tensor([m.bin_lower_edge(i)], dtype=torch.float32)
        below = torch.nextafter(edge, torch.tensor([-float("inf")]))
        assert m.bin_index(edge).item() == i
        assert m.bin_index(below).item() == i - 1


def test_streaming_equals_one_batch_and_state_is_flat(batches) -> None:
    streamed, single = PixelOODMetrics(), PixelOODMetrics()
    sizes = []
    for z, t in batches:
        streamed.update(ood_score("energy", z), t)
        sizes.append(streamed.hist.numel())
    single.update(torch.cat([ood_score("energy", z) for z, _ in batches]), torch.cat([t for _, t in batches]))
    a, b = streamed.compute(), single.compute()
    for key in a:
        assert float(a[key]) == float(b[key])
    assert len(set(sizes)) == 1 and sizes[0] == 2 * streamed.num_bins


def test_bad_inputs_raise_clear_errors() -> None:
    m = PixelOODMetrics()
    scores = torch.rand(2, 8, 8)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="does not match"):
        m.update(scores, target[:, :4])
    bad = scores.clone()
    bad[0, 0, :3] = float("nan")
    bad[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="4 of 128 scores"):
        m.update(bad, target)
    # non-finite scores at ignored pixels are fine
    t_void = target.clone()
    t_void[0, 0, :3] = 255
    t_void[1, 0, 0] = 255
    m.update(bad, t_void)
    t_bad = target.clone()
    t_bad[0, 1, 1] = 2
    t_bad[1, 2, 2] = 254
    with pytest.raises(ValueError, match=r"\[2, 254\]"):
        m.update(scores, t_bad)
    with pytest.raises(ValueError, match="floating point"):
        m.update(target, target)
    with pytest.raises(ValueError, match="mode"):
        PixelOODMetrics(mode="fast")
    with pytest.raises(ValueError, match="score_range"):
        PixelOODMetrics(score_range=(1.0, 0.0))


@pytest.mark.parametrize("mode", ["binned", "exact"])
def test_not_computable_without_both_classes(mode: str) -> None:
    m = PixelOODMetrics(mode=mode)
    assert not m.is_computable()
    m.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert not m.is_computable()
    with pytest.raises(NotComputableError, match="0 OOD and 16 in-distribution"):
        m.compute()
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, 0, 0] = 1
    m.update(torch.rand(1, 4, 4), t)
    assert m.is_computable()
    assert 0.0 <= float(m.compute()["auroc"]) <= 1.0
