"""Calibration loss terms (label smoothing, focal, margin-based label smoothing) against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses import FocalLoss, LabelSmoothingCE, LossTerm, MarginLabelSmoothing

K = 5


def make_batch(seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 4, 3, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, K, (2, 4, 3), generator=g)
    target[0, 0, :2] = OOD_ID
    target[1, 3, 2] = VOID_ID
    return logits, target


def inlier_pixels(logits: torch.Tensor, target: torch.Tensor):
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t < K:
                    yield [float(v) for v in logits[i, :, y, x]], t


def log_softmax(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ref_label_smoothing(logits, target, eps) -> float:
    vals = []
    for z, t in inlier_pixels(logits, target):
        lp = log_softmax(z)
        q = [eps / K + (1 - eps) * (k == t) for k in range(K)]
        vals.append(-sum(qk * lk for qk, lk in zip(q, lp)))
    return sum(vals) / len(vals)


def ref_focal(logits, target, gamma) -> float:
    vals = []
    for z, t in inlier_pixels(logits, target):
        lp = log_softmax(z)[t]
        vals.append(-((1 - math.exp(lp)) ** gamma) * lp)
    return sum(vals) / len(vals)


def ref_mbls(logits, target, margin, alpha, reduction) -> float:
    vals = []
    for z, t in inlier_pixels(logits, target):
        gaps = [max(max(z) - v - margin, 0.0) for v in z]
        penalty = sum(gaps) if reduction == "sum" else sum(gaps) / K
        vals.append(-log_softmax(z)[t] + alpha * penalty)
    return sum(vals) / len(vals)


CASES = [
    (LabelSmoothingCE(), lambda z, t: ref_label_smoothing(z, t, 0.1)),
    (LabelSmoothingCE(smoothing=0.3), lambda z, t: ref_label_smoothing(z, t, 0.3)),
    (FocalLoss(), lambda z, t: ref_focal(z, t, 2.0)),
    (FocalLoss(gamma=0.5), lambda z, t: ref_focal(z, t, 0.5)),
    (MarginLabelSmoothing(), lambda z, t: ref_mbls(z, t, 10.0, 0.1, "mean")),
    (MarginLabelSmoothing(margin=1.0, alpha=0.2), lambda z, t: ref_mbls(z, t, 1.0, 0.2, "mean")),
    (MarginLabelSmoothing(margin=1.0, class_reduction="sum"), lambda z, t: ref_mbls(z, t, 1.0, 0.1, "sum")),
]


@pytest.mark.parametrize("term,reference", CASES, ids=lambda c: type(c).__name__ if isinstance(c, LossTerm) else "")
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_matches_direct_computation(term: LossTerm, reference, scale: float) -> None:
    logits, target = make_batch(seed=int(scale), scale=scale)
    assert term(logits, target).item() == pytest.approx(reference(logits, target), rel=1e-9)


def test_label_smoothing_agrees_with_torch() -> None:
    logits, target = make_batch()
    t = target.masked_fill(target >= K, VOID_ID)
    expected = F.cross_entropy(logits, t, ignore_index=VOID_ID, label_smoothing=0.2)
    assert LabelSmoothingCE(smoothing=0.2)(logits, target).item() == pytest.approx(expected.item(), rel=1e-12)


def test_degenerate_settings_reduce_to_cross_entropy() -> None:
    logits, target = make_batch()
    t = target.masked_fill(target >= K, VOID_ID)
    ce = F.cross_entropy(logits, t, ignore_index=VOID_ID).item()
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(ce, rel=1e-12)
    assert LabelSmoothingCE(smoothing=0.0)(logits, target).item() == pytest.approx(ce, rel=1e-12)
    assert MarginLabelSmoothing(alpha=0.0)(logits, target).item() == pytest.approx(ce, rel=1e-12)
    # The margin penalty only bites past the margin: with logits spread by < m, MbLS is CE.
    assert MarginLabelSmoothing(margin=100.0, alpha=1.0)(logits, target).item() == pytest.approx(ce, rel=1e-12)


@pytest.mark.parametrize("factory", [LabelSmoothingCE, FocalLoss, MarginLabelSmoothing])
def test_without_inliers_the_value_is_a_graph_keeping_zero(factory) -> None:
    logits, target = make_batch()
    target = torch.where(target < K, torch.full_like(target, OOD_ID), target)
    logits.requires_grad_(True)
    value = factory()(logits, target)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("term", [c[0] for c in CASES])
def test_gradient_step_lowers_the_loss_and_raises_target_probability(term: LossTerm) -> None:
    logits, target = make_batch(scale=3.0)
    z = logits.clone().requires_grad_(True)
    before = term(z, target)
    before.backward()
    stepped = (z - 0.5 * z.grad).detach()
    assert term(stepped, target).item() < before.item()
    inl = target < K
    safe = target.masked_fill(~inl, 0).unsqueeze(1)
    p = lambda x: torch.softmax(x, 1).gather(1, safe).squeeze(1)[inl].mean()  # noqa: E731
    assert p(stepped) > p(logits)


def test_mbls_step_shrinks_logit_gaps_beyond_the_margin() -> None:
    logits, target = make_batch(scale=8.0)
    term = MarginLabelSmoothing(margin=2.0, alpha=1.0)
    z = logits.clone().requires_grad_(True)
    term(z, target).backward()
    stepped = (z - 0.2 * z.grad).detach()
    gap = lambda x: F.relu(x.amax(1, keepdim=True) - x - 2.0).sum(1)[target < K].mean()  # noqa: E731
    assert gap(stepped) < gap(logits)


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: LabelSmoothingCE(smoothing=1.5), "smoothing"),
        (lambda: FocalLoss(gamma=-1.0), "gamma"),
        (lambda: MarginLabelSmoothing(margin=-1.0), "margin"),
        (lambda: MarginLabelSmoothing(class_reduction="max"), "class_reduction"),
    ],
)
def test_invalid_settings_are_rejected(factory, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_target_values_are_rejected() -> None:
    logits, target = make_batch()
    target[0, 1, 1] = 7
    for term in (LabelSmoothingCE(), FocalLoss(), MarginLabelSmoothing()):
        with pytest.raises(ValueError, match=r"\[7\]"):
            term(logits, target)


def test_names_for_logged_keys() -> None:
    assert [t.name for t in (LabelSmoothingCE(), FocalLoss(), MarginLabelSmoothing())] == [
        "label_smoothing_ce",
        "focal",
        "margin_label_smoothing",
    ]
