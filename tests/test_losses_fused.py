"""Shared pixel statistics: fused backward vs autograd, shared objective vs the terms one by one."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses import (
    STAT_NAMES,
    CrossEntropy,
    EnergyHinge,
    EnergyHingeEstimatedMargins,
    FocalLoss,
    LabelSmoothingCE,
    LossTerm,
    MarginLabelSmoothing,
    MaxSoftmaxMargin,
    MetaOoD,
    PixelStats,
    PositiveEnergy,
    SigmoidSumRejection,
    UniformOutlierExposure,
    evaluate_terms,
)
from synthrel_lightning.models import OODSegmenter, TinySegmenter

K = 5


def make_batch(seed: int = 0, scale: float = 2.0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 4, 6, generator=g, dtype=dtype) * scale
    target = torch.randint(0, K, (2, 4, 6), generator=g)
    target[0, 1, :3] = OOD_ID
    target[1, 2:, 4:] = OOD_ID
    target[1, 0, 0] = VOID_ID
    return logits, target


def all_terms() -> list[LossTerm]:
    return [
        CrossEntropy(),
        UniformOutlierExposure(weight=0.5),
        EnergyHingeEstimatedMargins(weight=0.1),
        SigmoidSumRejection(weight=0.1, inlier_weight=0.1),
        MaxSoftmaxMargin(weight=0.1),
        PositiveEnergy(weight=0.1),
        CrossEntropy(weight=0.3, class_weights=[1.0, 2.0, 0.5, 1.5, 3.0]),
        LabelSmoothingCE(weight=0.2),
        FocalLoss(weight=0.2),
        MarginLabelSmoothing(weight=0.2, margin=1.0),
        MetaOoD(weight=0.5),
        EnergyHinge(weight=0.1, m_in=-3.0, m_out=-1.0),
        MarginLabelSmoothing(weight=0.2, margin=1.0, class_reduction="sum"),
    ]


def old_formulation(term: LossTerm, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Each term written directly on the full logits with plain autograd ops (the per-term formulation)."""
    inl, ood = t < K, t == OOD_ID

    def mmean(v, m):
        return torch.where(m, v, v.new_zeros(())).sum() / m.sum().clamp_min(1)

    lse = torch.logsumexp(z, 1)
    logp = torch.log_softmax(z, 1)
    safe = torch.where(inl, t, 0)
    logp_t = logp.gather(1, safe[:, None])[:, 0]
    if isinstance(term, CrossEntropy):
        w = None if term.class_weights is None else z.new_tensor(term.class_weights)
        return F.cross_entropy(z, t.masked_fill(~inl, VOID_ID), weight=w, ignore_index=VOID_ID)
    if isinstance(term, UniformOutlierExposure):
        return mmean(lse - z.mean(1), ood)
    if isinstance(term, MetaOoD):
        soft = torch.zeros_like(z)
        soft.scatter_(1, safe[:, None], inl[:, None].to(z.dtype) * (1 - term.lam))
        soft = torch.where(ood[:, None], term.lam / K, soft)
        return (soft * -logp).mean()
    if isinstance(term, EnergyHinge):
        e = -lse
        m_in, m_out = (torch.as_tensor(m, dtype=z.dtype) for m in (term.m_in, term.m_out))
        hinge_in, hinge_out = mmean(F.relu(e - m_in).square(), inl), mmean(F.relu(m_out - e).square(), ood)
        loss = 0.5 * (hinge_in + hinge_out) if ood.any() else hinge_in
        smooth = ((e[:, 1:] - e[:, :-1]) ** 2).sum() + ((e[:, :, 1:] - e[:, :, :-1]) ** 2).sum()
        return loss + term.sparsity_weight * e[ood].norm() + term.smoothness_weight * smooth / 2
    if isinstance(term, SigmoidSumRejection):
        s = torch.sigmoid(z).sum(1)
        return mmean(F.softplus(s - term.ood_margin), ood) + term.inlier_weight * mmean(
            F.softplus(term.inlier_margin - s), inl
        )
    if isinstance(term, MaxSoftmaxMargin):
        d = 1 - torch.exp(z.amax(1) - lse)
        return mmean(F.relu(term.margin - d).square(), ood) + term.inlier_weight * mmean(d.square(), inl)
    if isinstance(term, PositiveEnergy):
        return mmean(F.relu(lse), ood)
    if isinstance(term, LabelSmoothingCE):
        return mmean(-(1 - term.smoothing) * logp_t - term.smoothing * logp.mean(1), inl)
    if isinstance(term, FocalLoss):
        return mmean(-(-torch.expm1(logp_t)).pow(term.gamma) * logp_t, inl)
    if isinstance(term, MarginLabelSmoothing):
        gaps = F.relu(z.amax(1, keepdim=True) - z - term.margin)
        gaps = gaps.sum(1) if term.class_reduction == "sum" else gaps.mean(1)
        return mmean(-logp_t + term.alpha * gaps, inl)
    raise AssertionError(type(term))


NEED_SETS = [frozenset(c) for r in (1, 2, 5) for c in itertools.combinations(sorted(STAT_NAMES), r)]


@pytest.mark.parametrize("needs", NEED_SETS, ids=lambda n: "+".join(sorted(n)))
def test_fused_reductions_pass_gradcheck(needs: frozenset[str]) -> None:
    logits, target = make_batch(scale=1.5)
    names = sorted(needs)

    def f(z):
        stats = PixelStats(z, target, needs)
        return tuple(getattr(stats, n) for n in names)

    assert torch.autograd.gradcheck(f, (logits.clone().requires_grad_(True),))


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_fused_statistics_equal_plain_ops_in_value_and_gradient(scale: float) -> None:
    logits, target = make_batch(seed=1, scale=scale)
    weights = {n: torch.randn(2, 4, 6, dtype=torch.float64) for n in STAT_NAMES}
    grads, values = [], []
    for fused in (True, False):
        z = logits.clone().requires_grad_(True)
        stats = PixelStats(z, target, STAT_NAMES, fused=fused)
        vals = {n: getattr(stats, n) for n in STAT_NAMES}
        sum((weights[n] * v).sum() for n, v in vals.items()).backward()
        grads.append(z.grad)
        values.append(vals)
    for n in STAT_NAMES:
        torch.testing.assert_close(values[0][n], values[1][n], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    # The plain ops are the textbook definitions.
    torch.testing.assert_close(values[0]["lse"], torch.logsumexp(logits, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(values[0]["sigmoid_sum"], torch.sigmoid(logits).sum(1))


@pytest.mark.parametrize("fused", [True, False])
def test_shared_objective_matches_the_per_term_formulation(fused: bool) -> None:
    logits, target = make_batch(seed=2, scale=3.0)
    terms = all_terms()
    z_new = logits.clone().requires_grad_(True)
    values, valid = evaluate_terms(terms, z_new, target, fused=fused)
    assert bool(valid)
    sum(t.weight * v for t, v in zip(terms, values)).backward()

    # The margins were just estimated; the per-term formulation uses the same buffers.
    z_old = logits.clone().requires_grad_(True)
    old = [old_formulation(t, z_old, target) for t in terms]
    sum(t.weight * v for t, v in zip(terms, old)).backward()
    for t, a, b in zip(terms, values, old):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, t=t: f"{type(t).__name__}: {m}")
    torch.testing.assert_close(z_new.grad, z_old.grad, rtol=1e-9, atol=1e-12)


def test_compute_losses_equals_the_terms_called_one_by_one() -> None:
    logits, target = make_batch(seed=3, scale=2.0, dtype=torch.float32)
    module = OODSegmenter(TinySegmenter(num_classes=K), num_classes=K, losses=all_terms())
    module.train()
    z = logits.clone().requires_grad_(True)
    parts = module.compute_losses(z, target)
    parts["loss"].backward()

    alone = all_terms()  # fresh terms, so the estimated margins start from the same values
    z2 = logits.clone().requires_grad_(True)
    total = sum(t.weight * t(z2, target) for t in alone)
    total.backward()
    torch.testing.assert_close(parts["loss"], total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-4, atol=1e-7)
    fresh = EnergyHingeEstimatedMargins(weight=0.1)
    assert parts["loss_energy_hinge_estimated_margins"].item() == pytest.approx(fresh(logits, target).item(), rel=1e-5)
    assert module.losses[2].m_in.item() == pytest.approx(alone[2].m_in.item(), rel=1e-6)
    expected_keys = {"loss_cross_entropy", "loss_cross_entropy_", "loss_sigmoid_sum_rejection", "loss_focal"}
    assert expected_keys | {"loss_meta_ood", "loss_energy_hinge", "loss_margin_label_smoothing_"} <= set(parts)


def test_bad_target_raises_once_and_leaves_estimated_margins_alone() -> None:
    logits, target = make_batch(dtype=torch.float32)
    module = OODSegmenter(TinySegmenter(num_classes=K), num_classes=K, losses=all_terms()[:3])
    module.train()
    bad = target.clone()
    bad[0, 0, 0] = 77
    with pytest.raises(ValueError, match=r"OODSegmenter: target holds values \[77\] outside 0..4"):
        module.compute_losses(logits, bad)
    hinge = module.losses[2]
    assert int(hinge.num_updates) == 0 and hinge.m_in.item() == -12.0
    module.compute_losses(logits, target)
    assert int(hinge.num_updates) == 1


class _L1ToZero(LossTerm):
    """A user term without forward_stats: mean |z| over all pixels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return logits.abs().mean()


def test_terms_without_statistics_are_called_directly_and_compile_flag_is_eager_on_cpu() -> None:
    logits, target = make_batch(dtype=torch.float32)
    terms = [CrossEntropy(), _L1ToZero(weight=0.5), PositiveEnergy()]
    assert [t.supports_stats for t in terms] == [True, False, True]
    module = OODSegmenter(TinySegmenter(num_classes=K), num_classes=K, losses=terms, compile_losses=True)
    parts = module.compute_losses(logits, target)
    expected = terms[0](logits, target) + 0.5 * logits.abs().mean() + terms[2](logits, target)
    torch.testing.assert_close(parts["loss"], expected)
    assert module._compiled_terms is None  # CPU logits: no compilation


def test_single_term_keeps_the_standalone_path() -> None:
    logits, target = make_batch(dtype=torch.float32)
    module = OODSegmenter(TinySegmenter(num_classes=K), num_classes=K, losses=[CrossEntropy()])
    expected = F.cross_entropy(logits, target.masked_fill(target >= K, VOID_ID), ignore_index=VOID_ID)
    torch.testing.assert_close(module.compute_losses(logits, target)["loss"], expected)


def test_statistics_reject_unknown_or_missing_names_and_bad_class_weights() -> None:
    logits, target = make_batch()
    with pytest.raises(ValueError, match="unknown pixel statistics"):
        PixelStats(logits, target, {"lse", "entropy"})
    stats = PixelStats(logits, target, {"lse"})
    assert stats.sigmoid_sum is None
    with pytest.raises(KeyError, match="sigmoid_sum"):
        stats.need("sigmoid_sum")
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        evaluate_terms([CrossEntropy(class_weights=[1.0, 2.0]), PositiveEnergy()], logits, target)


def test_empty_masks_give_graph_keeping_zeros_in_the_shared_path() -> None:
    logits, _ = make_batch()
    target = torch.full((2, 4, 6), VOID_ID)
    z = logits.clone().requires_grad_(True)
    terms = all_terms()
    for term in terms:
        if isinstance(term, EnergyHinge):  # PEBAL's smoothness covers the whole energy map, void included
            term.smoothness_weight = 0.0
    values, valid = evaluate_terms(terms, z, target)
    assert bool(valid) and all(v.item() == 0.0 for v in values)
    sum(values).backward()
    assert torch.count_nonzero(z.grad) == 0


def test_shared_path_trains_a_segmenter_step() -> None:
    torch.manual_seed(0)
    module = OODSegmenter(TinySegmenter(num_classes=K), num_classes=K, losses=all_terms()[:6])
    images = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, K, (2, 16, 16))
    target[:, 4:8, 4:8] = OOD_ID
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    first = None
    for _ in range(5):
        opt.zero_grad()
        loss = module.compute_losses(module.raw_logits(images), target)["loss"]
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in module.parameters())
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    assert isinstance(module.segmenter, nn.Module)
