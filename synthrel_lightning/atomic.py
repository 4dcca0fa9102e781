"""Atomic file writes: write to a temporary file in the target folder, then ``os.replace``.

A reader (or a resumed run) never sees a half-written file: the target either holds
the previous complete content or the new complete content. Every file is created by
``os.open(..., 0o666)``, so the kernel applies the process umask as for a plain
``open()`` (teammates sharing an output folder can read them); the umask is never
changed, not even for a moment, so files other threads create meanwhile keep theirs.

Temporary files are named ``.tmp-<host tag>-<pid>-<random>.<stem><suffix>``, so that a
clean-up (:func:`abandoned_temp`) can tell a live writer's file from one left by a
process that died.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TEMP_PREFIX",
    "abandoned_temp",
    "atomic_save_png",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "create_temp",
    "file_mode",
]

TEMP_PREFIX = ".tmp-"
"""Name prefix of every temporary file this package writes beside its final file."""

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_OWNED = re.compile(r"^\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{12}\.")
# Outlier banks of earlier versions named temp files .tmp-<hostname>-<pid>-<uuid hex>.
_OWNED_LEGACY = re.compile(r"^\.tmp-(?P<hostname>.+)-(?P<pid>\d+)-[0-9a-f]+$")


def _host_tag(host: str | None = None) -> str:
    return hashlib.sha1((host or socket.gethostname()).encode()).hexdigest()[:8]


def file_mode() -> int:
    """The permission bits a newly created file gets under the current umask (``0o666 & ~umask``).

    Read without changing the umask (``/proc/self/status`` on Linux; elsewhere by creating and
    removing a probe file), so it is safe while other threads create files.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"{TEMP_PREFIX}umask-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    fd = os.open(probe, _NEW_FILE, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def create_temp(folder: str | os.PathLike[str], stem: str = "", suffix: str = ".tmp") -> Path:
    """Create a new empty temporary file in ``folder`` (mode ``0o666`` less the umask) and return its path.

    The name carries this host's tag and process id (see :func:`abandoned_temp`) and keeps
    ``stem`` and ``suffix`` (some writers, PIL and NumPy, pick the format from the suffix).
    """
    folder = Path(folder)
    while True:
        tmp = folder / f"{TEMP_PREFIX}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.{stem}{suffix}"
        try:
            os.close(os.open(tmp, _NEW_FILE, 0o666))
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def abandoned_temp(path: str | os.PathLike[str], max_age_s: float = 3600.0, now: float | None = None) -> bool:
    """Whether the temporary file ``path`` was left by a writer that is gone.

    True when its name says this host wrote it and that process no longer runs, or when it
    was last modified over ``max_age_s`` seconds ago (a writer on another host, or a name
    without an owner). A fresh file of a live writer, here or on another host, is never
    abandoned.
    """
    path = Path(path)
    name = path.name
    owned = _OWNED.match(name)
    if owned is not None and owned["host"] == _host_tag() and not _pid_alive(int(owned["pid"])):
        return True
    legacy = _OWNED_LEGACY.match(name)
    if legacy is not None and legacy["hostname"] == socket.gethostname() and not _pid_alive(int(legacy["pid"])):
        return True
    try:
        return (time.time() if now is None else now) - path.stat().st_mtime > max_age_s
    except FileNotFoundError:
        return False


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = create_temp(path.parent, path.stem, path.suffix or ".tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
