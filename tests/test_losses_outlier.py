"""Per-pixel outlier loss terms against direct per-pixel computations, plus gradient directions."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses import (
    EnergyHinge,
    EnergyHingeEstimatedMargins,
    GamblerLoss,
    LossTerm,
    Mask2AnomalyMarginLoss,
    MaxSoftmaxMargin,
    MetaOoD,
    PositiveEnergy,
    RbALoss,
    SigmoidSumRejection,
    UniformOutlierExposure,
)

K = 4


def make_batch(seed: int = 0, scale: float = 1.0, with_ood: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits (2,K,3,5) and a target mixing inliers, OOD and void pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 3, 5, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, K, (2, 3, 5), generator=g)
    if with_ood:
        target[0, 0, :3] = OOD_ID
        target[1, 2, 1:] = OOD_ID
    target[0, 2, 4] = VOID_ID
    target[1, 0, 0] = VOID_ID
    return logits, target


def pixels(logits: torch.Tensor, target: torch.Tensor):
    """Yield (list of K logits, label) per pixel."""
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                yield [float(v) for v in logits[i, :, y, x]], int(target[i, y, x])


def lse(z: list[float]) -> float:
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z))


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ref_oe(logits, target) -> float:
    return mean([-sum(v - lse(z) for v in z) / K for z, t in pixels(logits, target) if t == OOD_ID])


def ref_energy(logits, target, m_in, m_out, sparsity=5e-4, smoothness=3e-6) -> float:
    """PEBAL's energy loss: halved hinges (with OOD pixels), L2 norm of OOD energies, neighbour smoothness."""
    li = [max(-lse(z) - m_in, 0.0) ** 2 for z, t in pixels(logits, target) if t < K]
    lo = [max(m_out + lse(z), 0.0) ** 2 for z, t in pixels(logits, target) if t == OOD_ID]
    hinge = 0.5 * (mean(li) + mean(lo)) if lo else mean(li)
    norm = math.sqrt(sum(lse(z) ** 2 for z, t in pixels(logits, target) if t == OOD_ID))
    b, _, h, w = logits.shape
    energy = [[[-lse([float(v) for v in logits[i, :, y, x]]) for x in range(w)] for y in range(h)] for i in range(b)]
    diffs = [(e[y + 1][x] - e[y][x]) ** 2 for e in energy for y in range(h - 1) for x in range(w)]
    diffs += [(e[y][x + 1] - e[y][x]) ** 2 for e in energy for y in range(h) for x in range(w - 1)]
    return hinge + sparsity * norm + smoothness * sum(diffs) / 2


def ref_meta_ood(logits, target, lam) -> float:
    """Soft targets 1-λ (inlier label) and λ/K (OOD), zero on void, averaged over every (pixel, class)."""
    total = 0.0
    n = 0
    for z, t in pixels(logits, target):
        n += 1
        if t < K:
            total += (1 - lam) * (lse(z) - z[t])
        elif t == OOD_ID:
            total += lam * sum(lse(z) - v for v in z) / K
    return total / (n * K)


def ref_sigmoid_sum(logits, target, mode, ood_margin, inlier_weight, inlier_margin) -> float:
    f = (lambda x: math.log1p(math.exp(x))) if mode == "softplus" else (lambda x: max(x, 0.0))
    lo = [f(sum(sigmoid(v) for v in z) - ood_margin) for z, t in pixels(logits, target) if t == OOD_ID]
    li = [f(inlier_margin - sum(sigmoid(v) for v in z)) for z, t in pixels(logits, target) if t < K]
    return mean(lo) + inlier_weight * mean(li)


def ref_max_score(logits, target, margin, inlier_weight) -> float:
    def d(z):
        return 1.0 - math.exp(max(z) - lse(z))

    lo = [max(margin - d(z), 0.0) ** 2 for z, t in pixels(logits, target) if t == OOD_ID]
    li = [d(z) ** 2 for z, t in pixels(logits, target) if t < K]
    return mean(lo) + inlier_weight * mean(li)


def ref_positive_energy(logits, target) -> float:
    return mean([max(lse(z), 0.0) for z, t in pixels(logits, target) if t == OOD_ID])


CASES = [
    (UniformOutlierExposure(), lambda z, t: ref_oe(z, t)),
    (MetaOoD(), lambda z, t: ref_meta_ood(z, t, 0.9)),
    (MetaOoD(lam=0.3), lambda z, t: ref_meta_ood(z, t, 0.3)),
    (EnergyHinge(), lambda z, t: ref_energy(z, t, -12.0, -6.0)),
    (EnergyHinge(m_in=-2.0, m_out=-1.0), lambda z, t: ref_energy(z, t, -2.0, -1.0)),
    (
        EnergyHinge(m_in=-2.0, m_out=-1.0, sparsity_weight=0.1, smoothness_weight=0.0),
        lambda z, t: ref_energy(z, t, -2.0, -1.0, 0.1, 0.0),
    ),
    (SigmoidSumRejection(), lambda z, t: ref_sigmoid_sum(z, t, "softplus", 0.0, 0.0, 1.0)),
    (
        SigmoidSumRejection(mode="hinge", ood_margin=1.5, inlier_weight=0.5, inlier_margin=2.5),
        lambda z, t: ref_sigmoid_sum(z, t, "hinge", 1.5, 0.5, 2.5),
    ),
    (MaxSoftmaxMargin(), lambda z, t: ref_max_score(z, t, 1.0, 1.0)),
    (MaxSoftmaxMargin(margin=0.5, inlier_weight=0.0), lambda z, t: ref_max_score(z, t, 0.5, 0.0)),
    (PositiveEnergy(), lambda z, t: ref_positive_energy(z, t)),
]


@pytest.mark.parametrize("term,reference", CASES, ids=lambda c: type(c).__name__ if isinstance(c, LossTerm) else "")
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_matches_direct_computation(term: LossTerm, reference, scale: float) -> None:
    logits, target = make_batch(seed=int(scale), scale=scale)
    value = term(logits, target)
    assert value.ndim == 0
    assert value.item() == pytest.approx(reference(logits, target), rel=1e-9, abs=1e-12)


OOD_ONLY = [
    UniformOutlierExposure,
    PositiveEnergy,
    lambda: SigmoidSumRejection(),
    lambda: MaxSoftmaxMargin(inlier_weight=0.0),
    lambda: EnergyHinge(m_in=100.0, m_out=200.0, smoothness_weight=0.0),
]


@pytest.mark.parametrize("factory", OOD_ONLY)
def test_ood_terms_without_ood_pixels_give_a_graph_keeping_zero(factory) -> None:
    logits, target = make_batch(with_ood=False)
    logits.requires_grad_(True)
    value = factory()(logits, target)
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("term", [c[0] for c in CASES])
def test_bad_input_is_rejected_with_clear_errors(term: LossTerm) -> None:
    logits, target = make_batch()
    with pytest.raises(ValueError, match="shape"):
        term(logits, target[:, :2])
    with pytest.raises(TypeError, match="integer"):
        term(logits, target.double())
    bad = target.clone()
    bad[0, 1, 1] = K  # a train id the logits do not have
    with pytest.raises(ValueError, match=rf"\[{K}\]"):
        term(logits, bad)


@pytest.mark.parametrize("term", [c[0] for c in CASES])
def test_extreme_logits_stay_finite(term: LossTerm) -> None:
    logits, target = make_batch(scale=1e4)
    logits = logits.float().requires_grad_(True)
    value = term(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def _sgd_step(
    term: LossTerm, logits: torch.Tensor, target: torch.Tensor, lr: float
) -> tuple[float, float, torch.Tensor]:
    z = logits.clone().requires_grad_(True)
    before = term(z, target)
    before.backward()
    with torch.no_grad():
        stepped = z - lr * z.grad
    return before.item(), term(stepped, target).item(), stepped


def _ood_mean(values: torch.Tensor, target: torch.Tensor) -> float:
    return values[target == OOD_ID].mean().item()


def _energy(z: torch.Tensor) -> torch.Tensor:
    return -torch.logsumexp(z, dim=1)


def test_outlier_exposure_step_raises_ood_entropy() -> None:
    logits, target = make_batch(scale=3.0)
    before, after, stepped = _sgd_step(UniformOutlierExposure(), logits, target, lr=1.0)

    def entropy(z):
        p = torch.softmax(z, 1)
        return -(p * torch.log_softmax(z, 1)).sum(1)

    assert after < before
    assert _ood_mean(entropy(stepped), target) > _ood_mean(entropy(logits), target)


def test_energy_hinge_step_separates_energies() -> None:
    logits, target = make_batch()
    term = EnergyHinge(m_in=-5.0, m_out=2.0)  # both hinges active for these logits
    before, after, stepped = _sgd_step(term, logits, target, lr=0.5)
    assert after < before
    assert _ood_mean(_energy(stepped), target) > _ood_mean(_energy(logits), target)
    inl = target < K
    assert _energy(stepped)[inl].mean() < _energy(logits)[inl].mean()


def test_positive_energy_step_raises_ood_energy() -> None:
    logits, target = make_batch(scale=2.0)
    before, after, stepped = _sgd_step(PositiveEnergy(), logits, target, lr=0.5)
    assert after < before
    assert _ood_mean(_energy(stepped), target) > _ood_mean(_energy(logits), target)


def test_sigmoid_sum_step_lowers_ood_class_scores_and_raises_its_score() -> None:
    logits, target = make_batch()
    term = SigmoidSumRejection(inlier_weight=1.0, inlier_margin=3.0)
    before, after, stepped = _sgd_step(term, logits, target, lr=1.0)
    s = lambda z: torch.sigmoid(z).sum(1)  # noqa: E731
    assert after < before
    assert _ood_mean(-s(stepped), target) > _ood_mean(-s(logits), target)  # the -S score rises on OOD
    assert s(stepped)[target < K].mean() > s(logits)[target < K].mean()


def test_max_softmax_margin_step_lowers_ood_confidence() -> None:
    logits, target = make_batch(scale=3.0)
    before, after, stepped = _sgd_step(MaxSoftmaxMargin(), logits, target, lr=1.0)
    msp = lambda z: torch.softmax(z, 1).amax(1)  # noqa: E731
    assert after < before
    assert _ood_mean(msp(stepped), target) < _ood_mean(msp(logits), target)
    assert msp(stepped)[target < K].mean() > msp(logits)[target < K].mean()


def test_meta_ood_step_raises_ood_entropy_and_inlier_target_probability() -> None:
    logits, target = make_batch(scale=3.0)
    before, after, stepped = _sgd_step(MetaOoD(lam=0.5), logits, target, lr=20.0)

    def entropy(z):
        p = torch.softmax(z, 1)
        return -(p * torch.log_softmax(z, 1)).sum(1)

    def p_target(z):
        inl = target < K
        return torch.softmax(z, 1).gather(1, torch.where(inl, target, 0)[:, None])[:, 0][inl].mean().item()

    assert after < before
    assert _ood_mean(entropy(stepped), target) > _ood_mean(entropy(logits), target)
    assert p_target(stepped) > p_target(logits)
    with pytest.raises(ValueError, match="lam must be in"):
        MetaOoD(lam=1.5)


def test_energy_hinge_estimates_margins_from_inlier_energies() -> None:
    logits, target = make_batch(scale=3.0)
    term = EnergyHingeEstimatedMargins(in_quantile=0.75, margin_gap=4.0, momentum=0.5)
    energies = _energy(logits)[target < K].float()
    q1 = torch.quantile(energies, 0.75).item()
    value = term(logits, target)
    assert term.m_in.item() == pytest.approx(q1, rel=1e-6)
    assert term.m_out.item() == pytest.approx(q1 + 4.0, rel=1e-6)
    # The returned loss uses the margins of this step.
    assert value.item() == pytest.approx(ref_energy(logits, target, term.m_in.item(), term.m_out.item()), rel=1e-6)

    logits2, _ = make_batch(seed=7, scale=5.0)
    q2 = torch.quantile(_energy(logits2)[target < K].float(), 0.75).item()
    term(logits2, target)
    assert term.m_in.item() == pytest.approx(0.5 * q1 + 0.5 * q2, rel=1e-6)
    assert int(term.num_updates) == 2

    term.eval()
    frozen = term.m_in.clone()
    term(make_batch(seed=3, scale=9.0)[0], target)
    assert torch.equal(term.m_in, frozen)

    state = term.state_dict()
    assert set(state) == {"m_in", "m_out", "num_updates"}
    restored = EnergyHingeEstimatedMargins()
    restored.load_state_dict(state)
    assert restored.m_in.item() == term.m_in.item()


def test_energy_hinge_margins_stop_after_freeze_and_carry_no_gradient() -> None:
    logits, target = make_batch(scale=3.0)
    term = EnergyHingeEstimatedMargins(freeze_after=1)
    z = logits.clone().requires_grad_(True)
    term(z, target).backward()
    first = term.m_in.item()
    assert not term.m_in.requires_grad
    term(make_batch(seed=5, scale=8.0)[0], target)
    assert term.m_in.item() == first
    assert int(term.num_updates) == 1


def test_energy_hinge_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="m_in"):
        EnergyHinge(m_in=0.0, m_out=-1.0)
    with pytest.raises(ValueError, match="sparsity_weight"):
        EnergyHinge(sparsity_weight=-1.0)
    with pytest.raises(ValueError, match="EnergyHingeEstimatedMargins: in_quantile"):
        EnergyHingeEstimatedMargins(in_quantile=2.0)
    with pytest.raises(ValueError, match="freeze_after"):
        EnergyHingeEstimatedMargins(freeze_after=-1)
    with pytest.raises(ValueError, match="K\\+1 >= 2"):
        EnergyHinge(abstention_channel=True)(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_terms_are_configurable_from_yaml() -> None:
    parser = ArgumentParser()
    parser.add_argument("--losses", type=list[LossTerm])
    config = yaml.safe_load(
        """
losses:
  - class_path: synthrel_lightning.losses.CrossEntropy
  - class_path: synthrel_lightning.losses.EnergyHingeEstimatedMargins
    init_args: {weight: 0.1, in_quantile: 0.8}
  - class_path: synthrel_lightning.losses.SigmoidSumRejection
    init_args: {mode: hinge}
  - class_path: synthrel_lightning.losses.MetaOoD
    init_args: {lam: 0.9}
  - class_path: synthrel_lightning.losses.EnergyHinge
    init_args: {weight: 0.1}
"""
    )
    cfg = parser.parse_object(config)
    terms = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg).losses
    assert [type(t).__name__ for t in terms] == [
        "CrossEntropy",
        "EnergyHingeEstimatedMargins",
        "SigmoidSumRejection",
        "MetaOoD",
        "EnergyHinge",
    ]
    assert terms[1].weight == 0.1 and terms[1].in_quantile == 0.8
    assert terms[2].mode == "hinge" and terms[3].lam == 0.9
    assert [t.name for t in terms] == [
        "cross_entropy",
        "energy_hinge_estimated_margins",
        "sigmoid_sum_rejection",
        "meta_ood",
        "energy_hinge",
    ]


def _distributed_worker(rank: int, world: int, init_file: str, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # Rank 0 sees 4 inlier pixels with energy -10, rank 1 sees 12 with energy -2
        # (logits whose logsumexp is exactly -E: one class at -E, the rest very negative).
        n = 4 if rank == 0 else 12
        energy = -10.0 if rank == 0 else -2.0
        logits = torch.full((1, K, 1, n), -1e4)
        logits[:, 0] = -energy
        target = torch.zeros(1, 1, n, dtype=torch.long)
        term = EnergyHingeEstimatedMargins(in_quantile=0.5, margin_gap=3.0)
        term(logits, target)
        torch.save({"m_in": term.m_in.item(), "m_out": term.m_out.item()}, f"{results}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_energy_hinge_margins_are_averaged_across_processes(tmp_path) -> None:
    world = 2
    torch.multiprocessing.spawn(
        _distributed_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=world, join=True
    )
    expected = (4 * -10.0 + 12 * -2.0) / 16  # count-weighted mean of the per-process quantiles
    for rank in range(world):
        got = torch.load(tmp_path / f"out.{rank}")
        assert got["m_in"] == pytest.approx(expected)
        assert got["m_out"] == pytest.approx(expected + 3.0)


def test_terms_sharing_one_batch_see_in_place_changes() -> None:
    logits, target = make_batch(scale=2.0)
    first = PositiveEnergy()(logits, target).item()
    assert EnergyHinge(m_in=-5.0, m_out=2.0)(logits, target).item() == pytest.approx(
        ref_energy(logits, target, -5.0, 2.0)
    )
    logits.mul_(3.0)  # the shared logsumexp must not be reused after an in-place change
    assert PositiveEnergy()(logits, target).item() == pytest.approx(ref_positive_energy(logits, target))
    assert PositiveEnergy()(logits, target).item() != first
    target[0, 1, 1] = K  # nor the target check
    with pytest.raises(ValueError, match=rf"\[{K}\]"):
        UniformOutlierExposure()(logits, target)


def test_gambler_loss_reads_the_last_channel_as_abstention_and_rejects_bad_settings() -> None:
    logits, target = make_batch(scale=2.0)  # K channels: K-1 classes and the abstention class
    with pytest.raises(ValueError, match=rf"values \[{K - 1}\] outside 0..{K - 2}"):
        GamblerLoss()(torch.nn.functional.pad(logits, (2, 2, 2, 2)), torch.nn.functional.pad(target, (2, 2, 2, 2)))
    with pytest.raises(ValueError, match="kernel_size"):
        GamblerLoss(kernel_size=4)
    with pytest.raises(ValueError, match="ood_reg"):
        GamblerLoss(ood_reg=-0.1)
    with pytest.raises(ValueError, match="K\\+1 >= 2"):
        GamblerLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))


def test_gambler_step_raises_abstention_on_ood_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K + 1, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randint(0, K, (2, 8, 8), generator=g)
    target[1, 2:5, 2:5] = OOD_ID
    before, after, stepped = _sgd_step(GamblerLoss(ood_reg=1.0), logits, target, lr=1.0)
    abstain = lambda z: torch.softmax(z, 1)[:, -1]  # noqa: E731
    assert after < before
    assert _ood_mean(abstain(stepped), target) > _ood_mean(abstain(logits), target)


def _class_scores(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pred_logits = torch.randn(2, 5, K + 1, generator=g, dtype=torch.float64)
    pred_masks = torch.randn(2, 5, 3, 5, generator=g, dtype=torch.float64)
    return torch.einsum("bqc,bqhw->bchw", torch.softmax(pred_logits, -1)[..., :-1], torch.sigmoid(pred_masks))


@pytest.mark.parametrize("term", [RbALoss(), Mask2AnomalyMarginLoss()], ids=lambda t: type(t).__name__)
def test_mask_classification_step_lowers_the_loss_and_separates_scores(term: LossTerm) -> None:
    scores = _class_scores(1)
    _, target = make_batch()
    before, after, stepped = _sgd_step(term, scores, target, lr=0.05)
    assert after < before
    # Both scores are computed at the scores' resolution, which equals the target's here.
    gap = lambda s: _ood_mean(term.score(s), target) - term.score(s)[target < K].mean().item()  # noqa: E731
    if isinstance(term, RbALoss):
        assert gap(stepped) > gap(scores)
    else:  # with scores <= 0, both parts of the authors' margin loss pull every score towards 0
        assert term.score(stepped).abs().mean() < term.score(scores).abs().mean()
