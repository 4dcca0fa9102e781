"""Names that become file or folder names: one check, used wherever a path is built from a given name.

A name from a dataset, a config, a vocabulary or a logged set (a frame name, a domain, an
object, a split, a validation set, a method) must never move a write outside its output
folder: ``..``, absolute paths, ``~``, hidden names such as ``.git``, separators and control
characters (NUL) are refused with an error naming the value. :func:`relative_path_within`
accepts a relative path of such names (``street/b``), each part checked the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_name", "path_within", "relative_path_within"]

_FORBIDDEN = set('/\\:*?"<>|')


def check_name(name: object, what: str = "name") -> str:
    """``name`` as a string if it is safe as ONE path component, else a ValueError saying why."""
    text = str(name)
    problem = None
    if not text or not text.strip():
        problem = "it is empty"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        problem = "it holds a control character (e.g. NUL)"
    elif any(ch in _FORBIDDEN for ch in text):
        problem = "it holds a path separator or a character not allowed in file names"
    elif text in (".", ".."):
        problem = "it is a relative path step"
    elif text.startswith("."):
        problem = "it is a hidden name (starts with '.')"
    elif text.startswith("~"):
        problem = "it starts with '~' (a home folder)"
    elif text != text.strip():
        problem = "it has leading or trailing spaces"
    if problem is not None:
        raise ValueError(
            f"{what} {text!r} cannot be used as a file or folder name: {problem}; "
            "expected letters, digits and - _ . (not leading), e.g. 'fog' or 'frankfurt_000000_000294'"
        )
    return text


def path_within(root: str | os.PathLike[str], *names: object, what: str = "name") -> Path:
    """``root / name1 / name2 ...`` after :func:`check_name` on every part, and checked to stay inside ``root``."""
    base = Path(root)
    path = base.joinpath(*(check_name(n, what) for n in names))
    resolved, inside = path.resolve(), base.resolve()
    if resolved != inside and inside not in resolved.parents:
        raise ValueError(f"{what} path {path} leaves its output folder {base}")
    return path


def relative_path_within(root: str | os.PathLike[str], relative: str, suffix: str = "", what: str = "name") -> Path:
    """``root / relative + suffix`` for a relative path of ``/``-separated names (``street/b``), each checked.

    The file keeps the folders of ``relative`` (two frames ``a/b`` and ``a_b`` never share a file).
    """
    parts = str(relative).split("/")
    try:
        return path_within(root, *parts[:-1], f"{parts[-1]}{suffix}", what=what)
    except ValueError as err:
        raise ValueError(f"{what} {relative!r}: {err}") from None
