"""Misclassification detection against transcriptions of relis (PRR) and torch-uncertainty (AURC, AUGRC)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import auc
from torchmetrics.utilities.compute import _auc_compute

from synthrel_lightning.metrics import MisclassificationMetrics
from synthrel_lightning.metrics.misclassification import selective_metrics_from_counts


def relis_prr(labels: torch.Tensor, logits: torch.Tensor, metric: str = "prob") -> float:
    """Transcribed from relis uncertainty_helpers.py, UncertaintyOps.prediction_rejection_ratio (GenVal's relis/)."""
    probs = F.softmax(logits, dim=1)
    if metric == "prob":
        confidence, preds = torch.max(probs, dim=1)
    else:
        probs = probs + 1e-16
        confidence = torch.sum(torch.log(probs) * probs, axis=1)
        preds = torch.argmax(probs, dim=1)
    sorted_idx = torch.argsort(confidence, descending=True)
    return relis_prr_sorted((labels[sorted_idx] != preds[sorted_idx]).float().numpy())


def relis_prr_sorted(errors: np.ndarray) -> float:
    """The rest of relis' prediction_rejection_ratio, from the errors sorted by descending confidence."""
    num_samples = errors.shape[0]
    rev_cum_errors = np.cumsum(errors) / num_samples
    fraction_data = np.array([float(i + 1) / float(num_samples) * 100.0 for i in range(num_samples)])
    base_error = rev_cum_errors[-1]
    auc_uns = 1.0 - auc(fraction_data / 100.0, rev_cum_errors[::-1] / 100.0)
    random_rejection = np.asarray(
        [base_error * (1.0 - float(i) / float(num_samples)) for i in range(num_samples)], dtype=np.float32
    )
    auc_rnd = 1.0 - auc(fraction_data / 100.0, random_rejection / 100.0)
    orc_rejection = np.asarray(
        [
            base_error * (1.0 - float(i) / float(base_error / 100.0 * num_samples))
            for i in range(int(base_error / 100.0 * num_samples))
        ],
        dtype=np.float32,
    )
    orc = np.zeros_like(rev_cum_errors)
    orc[0 : orc_rejection.shape[0]] = orc_rejection
    auc_orc = 1.0 - auc(fraction_data / 100.0, orc / 100.0)
    return float((auc_uns - auc_rnd) / (auc_orc - auc_rnd) * 100.0)


def tu_aurc_augrc_sorted(errors: torch.Tensor) -> tuple[float, float]:
    """Transcribed from torch-uncertainty risk_coverage.py (AURC.compute, AUGRC.compute), errors sorted."""
    num_samples = errors.size(0)
    error_rates = errors.cumsum(dim=-1) / torch.arange(1, num_samples + 1, dtype=errors.dtype)
    cov = torch.arange(1, num_samples + 1) / num_samples
    aurc = _auc_compute(cov, error_rates) / (1 - 1 / num_samples)
    augrc = _auc_compute(cov, error_rates * cov) / (1 - 1 / num_samples)
    return float(aurc), float(augrc)


def tu_aurc_augrc(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    scores = probs.max(-1).values
    errors = (probs.argmax(-1) != targets) * 1.0
    return tu_aurc_augrc_sorted(errors[scores.argsort(descending=True)])


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (2, 20, 24), generator=g)
    logits = torch.randn(2, 5, 20, 24, generator=g) * 2
    logits += 2.5 * F.one_hot(labels, 5).permute(0, 3, 1, 2) * (torch.rand(2, 1, 20, 24, generator=g) < 0.7)
    labels[:, :2] = 255  # void rows
    return logits.double(), labels


def _flat(batches):
    logits = torch.cat([lg.movedim(1, -1).reshape(-1, 5) for lg, _ in batches])
    labels = torch.cat([lb.reshape(-1) for _, lb in batches])
    keep = labels != 255
    return logits[keep], labels[keep]


@pytest.mark.parametrize("confidence", ["prob", "entropy"])
def test_exact_and_binned_equal_relis_and_torch_uncertainty(confidence: str) -> None:
    batches = [_data(0), _data(1)]
    logits, labels = _flat(batches)
    prr_ref = relis_prr(labels, logits, confidence)
    exact = MisclassificationMetrics(confidence=confidence, mode="exact")
    binned = MisclassificationMetrics(confidence=confidence)
    for lg, lb in batches:
        exact.update(lg, lb)
        binned.update(lg, lb)
    got, got_binned = exact.compute(), binned.compute()
    assert float(got["prr"]) == pytest.approx(prr_ref, abs=1e-4)
    assert -100 < prr_ref < 100 and abs(prr_ref) > 1  # a real ranking, neither degenerate nor random
    assert float(got_binned["prr"]) == pytest.approx(prr_ref, abs=1e-4)
    if confidence == "prob":
        aurc_ref, augrc_ref = tu_aurc_augrc(F.softmax(logits, dim=1), labels)
        # torch-uncertainty's coverage is float32 (torch.arange / N): agreement to its precision
        assert float(got["aurc"]) == pytest.approx(aurc_ref, abs=1e-7)
        assert float(got["augrc"]) == pytest.approx(augrc_ref, abs=1e-7)
        assert float(got_binned["aurc"]) == pytest.approx(aurc_ref, abs=1e-6)
        assert float(got_binned["augrc"]) == pytest.approx(augrc_ref, abs=1e-6)


def test_ties_count_the_expected_position_over_every_order() -> None:
    # groups of equal confidence (most confident first): (errors, size)
    groups = [(1, 3), (0, 2), (2, 4), (3, 3), (1, 1)]
    values = []
    for placement in itertools.product(*[itertools.combinations(range(n), m) for m, n in groups]):
        errors = np.concatenate(
            [np.isin(np.arange(n), list(p)).astype(np.float32) for p, (_, n) in zip(placement, groups)]
        )
        values.append((relis_prr_sorted(errors), *tu_aurc_augrc_sorted(torch.from_numpy(errors).double())))
    ref = np.mean(values, axis=0)
    # cumulative counts at descending uncertainty = least confident group first
    m = torch.tensor([g[0] for g in groups][::-1], dtype=torch.float64)
    n = torch.tensor([g[1] for g in groups][::-1], dtype=torch.float64)
    got = selective_metrics_from_counts(m.cumsum(0), (n - m).cumsum(0))
    assert float(got["prr"]) == pytest.approx(ref[0], abs=1e-4)
    assert float(got["aurc"]) == pytest.approx(ref[1], abs=1e-7)
    assert float(got["augrc"]) == pytest.approx(ref[2], abs=1e-7)


def test_risk_coverage_curve_is_torch_uncertainty_error_rate() -> None:
    logits, labels = _data(2)
    metric = MisclassificationMetrics(mode="exact")
    metric.update(logits, labels)
    curve = metric.risk_coverage(max_points=10_000)
    flat_logits, flat_labels = _flat([(logits, labels)])
    probs = F.softmax(flat_logits, dim=1)
    errors = (probs.argmax(-1) != flat_labels).double()[probs.max(-1).values.argsort(descending=True)]
    rates = errors.cumsum(0) / torch.arange(1, errors.numel() + 1)
    assert curve["coverage"].numel() == errors.numel()
    assert torch.allclose(curve["risk"], rates, atol=1e-12)
    assert torch.allclose(curve["generalized_risk"], errors.cumsum(0) / errors.numel(), atol=1e-12)
    assert float(curve["coverage"][-1]) == 1.0


def test_merged_states_equal_one_state_and_bad_names_are_rejected() -> None:
    from synthrel_lightning.metrics.score_bins import merge_states

    batches = [_data(s) for s in range(3)]
    whole, parts = (
        MisclassificationMetrics(num_bins=1 << 12),
        [MisclassificationMetrics(num_bins=1 << 12) for _ in range(2)],
    )
    for i, (lg, lb) in enumerate(batches):
        whole.update(lg, lb)
        parts[min(i, 1)].update(lg, lb)
    merged = MisclassificationMetrics(num_bins=1 << 12)
    merged.update(*batches[0])  # then replaced by the merged state
    merged.hist = merge_states(torch.stack([p.hist for p in parts]))
    assert torch.equal(merged.hist, whole.hist)
    assert {k: float(v) for k, v in merged.compute().items()} == {k: float(v) for k, v in whole.compute().items()}
    with pytest.raises(ValueError, match="unknown confidence 'maxprob'; valid: prob, entropy"):
        MisclassificationMetrics(confidence="maxprob")
    perfect = MisclassificationMetrics(mode="exact")
    perfect.update(
        F.one_hot(torch.tensor([[0, 1, 2]]), 3).permute(0, 2, 1)[..., None].double(),
        torch.tensor([[0, 1, 2]])[..., None],
    )
    out = perfect.compute()
    assert float(out["aurc"]) == 0.0 and float(out["augrc"]) == 0.0 and torch.isnan(out["prr"])
