"""Shared figure saving (PNG + vector formats, umask-respecting) and device resolution."""

from __future__ import annotations

import pytest
import torch

from synthrel_lightning.devices import resolve_device
from synthrel_lightning.figures import figure_to_array, new_figure, save_figure


def test_save_figure_writes_raster_and_vector_formats(tmp_path):
    fig = new_figure((3, 2))
    fig.subplots().plot([0, 1], [1, 0])
    written = save_figure(fig, tmp_path / "plots" / "line.png")
    assert [p.name for p in written] == ["line.png", "line.svg", "line.pdf"]
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in written[1].read_bytes()[:400]
    assert written[2].read_bytes()[:4] == b"%PDF"
    assert figure_to_array(fig).shape[-1] == 3
    with pytest.raises(ValueError, match="formats"):
        save_figure(fig, tmp_path / "x.png", formats=["bmp"])


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="'gpu0'"):
        resolve_device("gpu0", who="engine")
