"""One Box type: placements, context crops, results and mask rules all speak it."""

from __future__ import annotations

import numpy as np
import pytest

from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.object_masks import MaskRules
from synthrel_lightning.synthesis.placement import Placement, PlacementSampler
from synthrel_lightning.synthesis.protocol import context_window


def test_box_forms_and_views() -> None:
    box = Box(3, 4, 5)
    assert Box.coerce((3, 4, 5)) == box == Box.coerce({"x0": 3, "y0": 4, "side": 5}) == Box.coerce(box)
    assert (box.x1, box.y1, box.xyxy, list(box)) == (8, 9, (3, 4, 8, 9), [3, 4, 5])
    grid = np.arange(100).reshape(10, 10)
    assert grid[box.slices].shape == (5, 5) and grid[box.slices][0, 0] == 43
    assert box.shifted(-3, -4) == Box(0, 0, 5) and box.fits(9, 8) and not box.fits(8, 8)
    with pytest.raises(ValueError, match="side must be >= 1"):
        Box(0, 0, 0)
    with pytest.raises(ValueError, match="keys x0, y0, side"):
        Box.coerce({"x": 1})
    with pytest.raises(ValueError, match=r"\(x0, y0, side\)"):
        Box.coerce("abc d")


def test_placements_windows_and_mask_rules_share_the_box() -> None:
    label = np.zeros((256, 512), np.uint8)
    p = PlacementSampler(size_range=(64, 96), reference_width=512).sample(label, np.random.default_rng(0))
    assert isinstance(p, Placement) and isinstance(p, Box) and type(p.as_box()) is Box
    assert p.context.side == p.context_side and p.context.shifted(p.context.x0, 0).y0 == p.context.y0
    win = context_window(p, label.shape)
    assert win.box == p.as_box() and win.box_in_crop.side == p.side
    mask = np.zeros((win.crop.side,) * 2, bool)
    mask[win.box_in_crop.slices] = True
    assert MaskRules().check(mask, win.box_in_crop) is None
