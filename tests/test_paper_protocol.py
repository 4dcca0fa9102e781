"""The paper protocol against a transcription of GenVal's ood_detection/metrics.py (compute_all_metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from synthrel_lightning.models.paper_protocol import PerImageOODMetrics, genval_image_metrics


def genval_compute_all_metrics(conf: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Transcribed from valeoai/GenVal ood_detection/metrics.py (auc_and_fpr_recall with recall 0.95)."""
    fpr_list, tpr_list, _ = skm.roc_curve(mask, -conf)
    fpr = fpr_list[np.argmax(tpr_list >= 0.95)]
    precision_in, recall_in, _ = skm.precision_recall_curve(mask, -conf)
    precision_out, recall_out, _ = skm.precision_recall_curve(1 - mask, conf)
    return {
        "fpr": fpr,
        "auroc": skm.auc(fpr_list, tpr_list),
        "aupr_in": skm.auc(recall_in, precision_in),
        "aupr_out": skm.auc(recall_out, precision_out),
    }


def _images(seed: int, tied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ood = (torch.rand(6, 24, 32, generator=g) < 0.15).to(torch.uint8)
    ood[torch.rand(6, 24, 32, generator=g) < 0.1] = 255  # void: negative in the paper's protocol
    scores = torch.randn(6, 24, 32, generator=g) + 1.2 * (ood == 1)
    if tied:  # few distinct values: many ties between OOD and in-distribution pixels
        scores = (scores * 2).round() / 2
    return scores.float(), ood


@pytest.mark.parametrize("tied", [False, True])
def test_per_image_metrics_equal_genval_compute_all_metrics(tied: bool) -> None:
    scores, ood = _images(3 if tied else 4, tied)
    metric = PerImageOODMetrics()
    metric.update(scores[:4], ood[:4])
    metric.update(scores[4:], ood[4:])
    ref = []
    for s, o in zip(scores, ood):
        mask = (o == 1).numpy().ravel().astype(np.int64)
        conf = -s.numpy().ravel()  # GenVal's conf is higher for in-distribution; our score is -conf
        r = genval_compute_all_metrics(conf, mask)
        ref.append(r)
        ours = genval_image_metrics(s.flatten(), torch.from_numpy(mask).bool())
        assert float(ours["auroc"]) == pytest.approx(r["auroc"], abs=1e-12)
        assert float(ours["ap"]) == pytest.approx(r["aupr_in"], abs=1e-12)
        assert float(ours["aupr_out"]) == pytest.approx(r["aupr_out"], abs=1e-12)
        assert float(ours["fpr95"]) == pytest.approx(r["fpr"], abs=1e-15)
    out = metric.compute()
    for ours_key, ref_key in (("auroc", "auroc"), ("ap", "aupr_in"), ("aupr_out", "aupr_out"), ("fpr95", "fpr")):
        assert float(out[ours_key]) == pytest.approx(np.mean([r[ref_key] for r in ref]), abs=1e-12)
    if tied:  # the trapezoid area is not the step-wise AP on tied scores: the difference the protocol must show
        step = np.mean(
            [skm.average_precision_score((o == 1).numpy().ravel(), s.numpy().ravel()) for s, o in zip(scores, ood)]
        )
        assert abs(float(out["ap"]) - step) > 1e-3


def test_fpr95_follows_roc_curve_dropped_points() -> None:
    # a collinear run: groups of (1 positive, 1 negative) tied pairs; scikit-learn drops the interior points
    # of such a run, so the first ROC point with TPR >= 0.95 may lie further along it
    scores = torch.tensor([10.0] * 10 + [float(v) for v in range(9, -11, -1) for _ in range(2)] + [-20.0] * 5)
    positive = torch.tensor([True] * 10 + [True, False] * 20 + [False] * 5)
    ref = genval_compute_all_metrics(-scores.numpy(), positive.numpy().astype(np.int64))
    ours = genval_image_metrics(scores, positive)
    assert float(ours["fpr95"]) == pytest.approx(ref["fpr"], abs=1e-15)
    assert float(ours["auroc"]) == pytest.approx(ref["auroc"], abs=1e-12)


def test_images_without_both_classes_are_skipped() -> None:
    metric = PerImageOODMetrics()
    metric.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.uint8))
    assert not metric.is_computable()
    with pytest.raises(ValueError, match="differ"):
        metric.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.uint8))
