"""OOD score functions and scorer modules against their formulas."""

from __future__ import annotations

import math

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
        "rba": -torch.sigmoid(logits).sum(1),
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
    for name in ("msp", "max_logit", "entropy", "energy", "rba"):
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
    with pytest.raises(RuntimeError, match="update_statistics"):
        scorer(z)
    scorer.update_statistics(z[:2], target[:2])
    scorer.update_statistics(z[2:], target[2:])
    scorer.finalize()

    max_logit, pred = z.max(1)
    valid = target != 255
    for c in range(4):
        sel = max_logit[valid & (pred == c)].double()
        assert math.isclose(float(scorer.class_mean[c]), float(sel.mean()), rel_tol=1e-5)
        assert math.isclose(float(scorer.class_std[c]), float(sel.std(unbiased=False)), rel_tol=1e-4)
    ref = -(max_logit - scorer.class_mean[pred]) / scorer.class_std[pred]
    torch.testing.assert_close(scorer(z), ref)

    # statistics live in buffers, so a checkpoint round trip restores the scorer
    path = tmp_path / "sml.pt"
    torch.save(scorer.state_dict(), path)
    restored = StandardizedMaxLogit(num_classes=4)
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
    with pytest.raises(RuntimeError, match="no statistics"):
        empty.finalize()
