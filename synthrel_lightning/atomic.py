"""Atomic file writes: write to a temporary file in the target folder, then ``os.replace``.

A reader (or a resumed run) never sees a half-written file: the target either holds
the previous complete content or the new complete content. Files get the mode a
plain ``open()`` would give them (``0o666`` less the process umask), so teammates
sharing an output folder can read them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def file_mode() -> int:
    """The permission bits a newly created file gets under the current umask (``0o666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: some writers (PIL, numpy) pick the format from it.
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates 0600 files; give the result the mode open() would have given it.
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text (UTF-8) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike[str], payload: Any, indent: int = 2) -> Path:
    """Write JSON atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=indent))


def atomic_save_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as PNG atomically."""
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))
