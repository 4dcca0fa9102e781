"""Safe checkpoint loading: weights-only by default, every failure names the file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from synthrel_lightning.atomic import atomic_write_text
from synthrel_lightning.checkpoints import CheckpointError, load_checkpoint, load_state_dict


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105 - crafted payload
        return (open, (self.marker, "w"))


def test_plain_checkpoint_loads_weights_only(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "hyper_parameters": {"lr": 0.1, "name": "x"}}, path)
    assert torch.equal(load_state_dict(path)["w"], torch.arange(3.0))
    assert load_checkpoint(path)["hyper_parameters"] == {"lr": 0.1, "name": "x"}


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*trusted=True"):
        load_checkpoint(path)
    assert not marker.exists()
    # the explicit opt-in loads it (and so runs its code)
    load_checkpoint(path, trusted=True)
    assert marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty"), (b"garbage" * 10, "not a torch checkpoint"), (None, "truncated")],
)
def test_broken_checkpoints_name_the_file(tmp_path, content, expected):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(100)}}, good)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:200] if content is None else content)
    with pytest.raises(CheckpointError, match=rf"bad\.ckpt.*{expected}"):
        load_checkpoint(bad, who="calibrate")
    with pytest.raises(CheckpointError, match=r"missing\.ckpt.*does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o027)
        path = atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)
