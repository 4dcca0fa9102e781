"""PlacementSampler: boxes in the frame, drivable overlap, top-quarter rule, perspective, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from synthrel_lightning.synthesis.placement import PlacementSampler


def _street(h: int = 256, w: int = 512, road_from: float = 0.5) -> np.ndarray:
    """Building (2) above, road (0) from ``road_from`` of the height down, a sidewalk strip (1) on the left."""
    label = np.full((h, w), 2, np.uint8)
    label[int(road_from * h) :] = 0
    label[int(road_from * h) :, : w // 8] = 1
    return label


def test_boxes_and_context_inside_frame_and_below_top_quarter() -> None:
    label = _street()
    sampler = PlacementSampler(size_range=(256, 512), reference_width=2048)
    h, w = label.shape
    for i in range(200):
        p = sampler.sample(label, np.random.default_rng(i))
        assert p is not None
        x0, y0, x1, y1 = p.xyxy
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        cx0, cy0, cx1, cy1 = p.context.xyxy
        assert 0 <= cx0 and cx1 <= w and cy1 <= h
        assert cy0 >= h // 4, f"context crop top {cy0} in the top quarter of a {h}-row frame"
        assert cx1 - cx0 == p.context_side and p.context_side == round(1.5 * p.side)
    assert sampler.stats["drivable"] == 200


def test_overlap_rule_is_honoured_exactly() -> None:
    # A small road patch: many candidate boxes fail the overlap test and are retried.
    label = np.full((256, 512), 2, np.uint8)
    label[180:256, 300:380] = 0
    sampler = PlacementSampler(size_range=(128, 256), min_overlap=0.5, max_tries=50, fallback="none")
    accepted = 0
    for i in range(100):
        p = sampler.sample(label, np.random.default_rng(i))
        if p is None:
            continue
        accepted += 1
        assert p.rule == "drivable"
        assert sampler.drivable_overlap(label, p) >= 0.5
        assert p.overlap == pytest.approx(sampler.drivable_overlap(label, p))
    assert accepted > 10
    assert sampler.stats["failed"] == 100 - accepted


def test_fallback_paper_rule_and_none() -> None:
    no_road = np.full((256, 512), 2, np.uint8)
    paper = PlacementSampler(size_range=(256, 512))
    sides = []
    for i in range(100):
        p = paper.sample(no_road, np.random.default_rng(i))
        assert p is not None and p.rule == "paper"
        assert p.context.y0 >= 64
        sides.append(p.side)
    # Sizes scale with the frame width: 512 px wide -> [64, 128].
    assert 64 <= min(sides) and max(sides) <= 128 and max(sides) - min(sides) > 30
    assert paper.stats == {"drivable": 0, "paper": 100, "failed": 0}

    strict = PlacementSampler(fallback="none")
    assert strict.sample(no_road, np.random.default_rng(0)) is None
    assert strict.stats["failed"] == 1
    # Without a label only the paper's rule applies.
    assert PlacementSampler().sample(None, np.random.default_rng(0), shape=(1024, 2048)).rule == "paper"


def test_perspective_boxes_grow_towards_the_bottom() -> None:
    label = _street(512, 1024, road_from=0.4)
    sampler = PlacementSampler(size_range=(128, 512), min_overlap=0.0, context_scale=1.0, top_margin_frac=0.25)
    bottoms, sides = [], []
    for i in range(300):
        p = sampler.sample(label, np.random.default_rng(i))
        bottoms.append(p.y1)
        sides.append(p.side)
    corr = np.corrcoef(bottoms, sides)[0, 1]
    assert corr > 0.6, corr
    flat = PlacementSampler(size_range=(128, 512), min_overlap=0.0, context_scale=1.0, perspective=False)
    fb, fs = [], []
    for i in range(300):
        p = flat.sample(label, np.random.default_rng(i))
        fb.append(p.y1)
        fs.append(p.side)
    # Without perspective the size does not follow the row of the anchor.
    assert np.corrcoef(fb, fs)[0, 1] < corr - 0.2


def test_deterministic_given_generator() -> None:
    label = _street()
    a = [PlacementSampler().sample(label, np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    others = {PlacementSampler().sample(label, np.random.default_rng(s)).xyxy for s in range(20)}
    assert len(others) > 15


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size_range=(0, 10)),
        dict(min_overlap=1.5),
        dict(top_margin_frac=1.0),
        dict(context_scale=0.5),
        dict(fallback="x"),
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PlacementSampler(**kwargs)


def test_bad_label_shape_raises() -> None:
    with pytest.raises(ValueError, match="train-id map"):
        PlacementSampler().sample(np.zeros((4, 4, 3), np.uint8), np.random.default_rng(0))
