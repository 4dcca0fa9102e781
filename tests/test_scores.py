"""OOD score functions and scorer modules against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthrel_lightning.scores import SCORE_NAMES, StandardizedMaxLogit, build_scorer, ood_score


@pytest.fixture()
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 4, 6, generator=g) * 3


def test_stateless_scores_match_formulas(logits: torch.Tensor) -> None:
    p = logits.softmax(1)
    expected = {
        "msp": 1 - p.max(1).values,
        "max_logit": -logits.max(1).values,
        "entropy": -(p * p.log()).sum(1),
        "energy": -torch.logsumexp(logits, 1),
        "sigmoid_sum": -torch.sigmoid(logits).sum(1),
    }
    for name, ref in expected.items():
        out = ood_score(name, logits)
        assert out.shape == (2, 4, 6)
        torch.testing.assert_close(out, ref, msg=name)
        torch.testing.assert_close(build_scorer(name)(logits), ref, msg=name)


def test_higher_means_more_ood() -> None:
    confident = torch.tensor([10.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    # a pixel that every class rejects: flat and low
    unsure = torch.full((1, 4, 1, 1), -2.0)
    for name in ("msp", "max_logit", "entropy", "energy", "sigmoid_sum"):
        assert ood_score(name, unsure).item() > ood_score(name, confident).item(), name


def test_temperature(logits: torch.Tensor) -> None:
    torch.testing.assert_close(ood_score("msp", logits, temperature=2.0), 1 - (logits / 2).softmax(1).max(1).values)
    torch.testing.assert_close(ood_score("energy", logits, temperature=2.0), -2 * torch.logsumexp(logits / 2, 1))
    with pytest.raises(ValueError, match="temperature"):
        ood_score("msp", logits, temperature=0.0)


def test_half_precision_logits_are_scored_in_float32(logits: torch.Tensor) -> None:
    out = ood_score("energy", logits.half())
    assert out.dtype == torch.float32


def test_unknown_and_misused_names(logits: torch.Tensor) -> None:
    with pytest.raises(ValueError) as err:
        ood_score("softmax_thing", logits)
    for name in SCORE_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="build_scorer"):
        ood_score("standardized_max_logit", logits)
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        ood_score("msp", logits[0])
    with pytest.raises(ValueError, match="valid names"):
        build_scorer("nope")


def test_standardized_max_logit_statistics_and_score(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 8, 8, generator=g) * 2
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    target[:, 0] = 255
    scorer = build_scorer("standardized_max_logit", num_classes=4)
    assert isinstance(scorer, StandardizedMaxLogit)
    with pytest.raises(RuntimeError, match="sml_stats"):
        scorer(z)
    scorer.boundary_suppression = scorer.dilated_smoothing = False
    scorer.update_statistics(z[:2], target[:2])
    scorer.update_statistics(z[2:], target[2:])
    scorer.finalize()

    max_logit, pred = z.max(1)
    # the authors' calculate_statistics.py: every pixel, grouped by prediction, torch's (unbiased) var
    for c in range(4):
        sel = max_logit[pred == c].double()
        assert math.isclose(float(scorer.class_mean[c]), float(sel.mean()), rel_tol=1e-5)
        assert math.isclose(float(scorer.class_std[c]), float(sel.var().sqrt()), rel_tol=1e-4)
    ref = -(max_logit - scorer.class_mean[pred]) / scorer.class_std[pred]
    torch.testing.assert_close(scorer(z), ref)

    # statistics live in buffers, so a checkpoint round trip restores the scorer
    path = tmp_path / "sml.pt"
    torch.save(scorer.state_dict(), path)
    restored = StandardizedMaxLogit(num_classes=4, boundary_suppression=False, dilated_smoothing=False)
    restored.load_state_dict(torch.load(path))
    torch.testing.assert_close(restored(z), ref)


def test_standardized_max_logit_by_label_and_errors() -> None:
    z = torch.zeros(1, 3, 2, 2)
    z[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[[1, 1], [1, 1]]])
    sml = StandardizedMaxLogit(num_classes=3, group_by="label")
    with pytest.raises(ValueError, match="needs a target"):
        sml.update_statistics(z)
    with pytest.raises(ValueError, match="classes"):
        sml.update_statistics(torch.zeros(1, 5, 2, 2), target)
    sml.update_statistics(z, target)
    with pytest.warns(UserWarning, match="pooled"):
        sml.finalize()
    assert math.isclose(float(sml.class_mean[1]), 2.5, rel_tol=1e-6)
    # classes without pixels fall back to the pooled statistics
    assert math.isclose(float(sml.class_mean[0]), 2.5, rel_tol=1e-6)
    empty = StandardizedMaxLogit(num_classes=3)
    with pytest.raises(RuntimeError, match="eval-mode pass"):
        empty.finalize()


def _rba_reference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """RbA's score as github.com/NazirNayal8/RbA computes it (semantic inference, then -sum tanh)."""
    mask_cls = torch.nn.functional.softmax(class_logits, dim=-1)[..., :-1]
    mask_pred = mask_logits.sigmoid()
    semseg = torch.einsum("bqc,bqhw->bchw", mask_cls, mask_pred)
    return -semseg.tanh().sum(dim=1)


def test_rba_and_mask2anomaly_on_mask_classification_scores() -> None:
    from synthrel_lightning.models import per_pixel_class_scores

    g = torch.Generator().manual_seed(3)
    class_logits = torch.randn(2, 7, 6, generator=g) * 2  # 7 queries, 5 classes + no-object
    mask_logits = torch.randn(2, 7, 4, 5, generator=g) * 3
    scores = per_pixel_class_scores(class_logits, mask_logits)
    assert scores.shape == (2, 5, 4, 5)
    torch.testing.assert_close(ood_score("rba", scores), _rba_reference(class_logits, mask_logits))
    torch.testing.assert_close(build_scorer("rba")(scores), _rba_reference(class_logits, mask_logits))
    # Mask2Anomaly: -max_k l_k on the same scores
    expected = -torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid()).max(1).values
    torch.testing.assert_close(ood_score("mask2anomaly", scores), expected)


def test_rba_is_refused_on_per_pixel_models() -> None:
    from synthrel_lightning.models import OODSegmenter, TinySegmenter

    with pytest.raises(ValueError, match="mask-classification outputs.*sigmoid_sum"):
        OODSegmenter(TinySegmenter(width=8), ood_score="rba")
    with pytest.raises(ValueError, match="mask-classification"):
        OODSegmenter(TinySegmenter(width=8), ood_score="mask2anomaly")


def _sml_post_processing_reference(score: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The authors' BoundarySuppressionWithSmoothing (network/deepv3.py) in scipy: width 4, 4 iterations,
    7x7 Gaussian (sigma 1) dilated by 6; kornia's morphology ignores outside pixels."""
    from scipy import ndimage as ndi

    cross = ndi.generate_binary_structure(2, 1)
    lab = pred.astype(np.float64)
    boundaries = (
        ndi.grey_dilation(lab, footprint=cross, mode="constant", cval=-np.inf)
        != ndi.grey_erosion(lab, footprint=np.ones((3, 3)), mode="constant", cval=np.inf)
    ).astype(np.float64)

    def diamond(r: int) -> np.ndarray:
        k = np.zeros((2 * r + 1, 2 * r + 1))
        k[r, r] = 1
        for _ in range(r):
            k = ndi.binary_dilation(k, structure=cross).astype(np.float64)
        return k

    out = score.astype(np.float64)
    width, iterations = 4, 4
    diff = width // iterations
    for it in range(iterations):
        prev = out
        r = 0 if it == iterations - 1 else width - diff * it - 1
        expanded = (
            boundaries if r == 0 else ndi.grey_dilation(boundaries, footprint=diamond(r), mode="constant", cval=-np.inf)
        )
        non_boundary = (expanded == 0).astype(np.float64)
        y = ndi.correlate(out * non_boundary, np.ones((3, 3)), mode="nearest")
        n = np.rint(ndi.correlate(non_boundary, np.ones((3, 3)), mode="nearest")).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            avg = np.where(n == 0, prev, y / np.maximum(n, 1))
        out = np.where(non_boundary == 0, avg, prev)
    size, sigma, dil = 7, 1.0, 6
    x = np.arange(size)
    g = (1 / (2 * math.pi * sigma**2)) * math.e ** (
        -((x[:, None] - (size - 1) / 2) ** 2 + (x[None, :] - (size - 1) / 2) ** 2) / (2 * sigma**2)
    )
    g /= g.sum()
    dilated = np.zeros(((size - 1) * dil + 1,) * 2)
    dilated[::dil, ::dil] = g
    return ndi.correlate(out, dilated, mode="nearest")


def test_sml_boundary_suppression_and_dilated_smoothing_match_the_authors_code() -> None:
    g = torch.Generator().manual_seed(5)
    # blocky predictions (real boundaries) plus noise
    z = torch.randn(2, 4, 10, 12, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    z = z + 0.3 * torch.randn(z.shape, generator=g)
    sml = StandardizedMaxLogit(num_classes=4)
    sml.update_statistics(z * 1.5)
    sml.finalize()
    standardized, pred = sml.standardized(z)
    out = sml(z)
    for b in range(2):
        ref = _sml_post_processing_reference(standardized[b].numpy(), pred[b].numpy())
        np.testing.assert_allclose(out[b].numpy(), -ref, rtol=1e-4, atol=1e-4)
    # the post-processing changes the map (it is not the plain standardized max logit)
    assert not torch.allclose(out, -standardized, atol=1e-3)
