"""Names that become paths never move a write outside its output folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthrel_lightning.synthesis.generate import eval_paths
from synthrel_lightning.synthesis.names import check_name, path_within


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("..", "relative path step"),
        (".", "relative path step"),
        ("../../etc", "path separator"),
        ("/etc/passwd", "path separator"),
        ("a\\b", "path separator"),
        ("~", "home folder"),
        ("~root", "home folder"),
        (".git", "hidden name"),
        ("fog\x00.png", "control character"),
        ("", "empty"),
        ("   ", "empty"),
        (" fog", "leading or trailing spaces"),
    ],
)
def test_unsafe_names_are_refused_with_the_value_and_the_reason(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        check_name(name, "domain name")
    assert repr(name) in str(info.value) and "domain name" in str(info.value)


def test_safe_names_pass_unchanged() -> None:
    for name in ("fog", "frankfurt_000000_000294", "night-2", "rain.v2", "arcade machine", 7):
        assert check_name(name) == str(name)


def test_paths_stay_inside_their_root(tmp_path: Path) -> None:
    assert path_within(tmp_path, "fog", "leftImg8bit") == tmp_path / "fog" / "leftImg8bit"
    for bad in ("..", "/abs", ".git", "~", "a/../../b"):
        with pytest.raises(ValueError):
            path_within(tmp_path, "fog", bad)
    # A symlink planted in the output folder cannot lead a write elsewhere either.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "images").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="leaves its output folder"):
        path_within(tmp_path / "out", "images", "x.png")
    with pytest.raises(ValueError, match="leaves its output folder"):
        eval_paths(tmp_path / "out", "0123abcd")
