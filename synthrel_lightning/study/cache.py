"""The study's cache: one JSON record per (stage, model, set, configuration hash), written atomically.

A record is found again only when everything that could change its content hashes the same:
:func:`config_hash` turns any JSON-like configuration into a short, order-independent digest
(mappings are hashed with sorted keys), and :func:`file_fingerprint` stands for a file's
content (size and modification time, or its bytes' SHA-256 when asked). A stage asks
:meth:`StageCache.get` before computing and :meth:`StageCache.put` after, so a rerun of an
interrupted study recomputes only what no record holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json

__all__ = ["StageCache", "canonical", "config_hash", "file_fingerprint"]

HASH_LENGTH = 16
"""Hex digits of a configuration hash kept in file names."""


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses and namespaces as dicts, paths as strings, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return canonical(asdict(value))
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        return canonical(value.as_dict())
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def config_hash(*parts: Any) -> str:
    """A short SHA-256 digest of ``parts`` (JSON with sorted keys, so mapping order does not matter)."""
    text = json.dumps(canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def file_fingerprint(path: str | os.PathLike[str] | None, content: bool = False) -> dict[str, Any] | None:
    """What a file's content hashes as: size and mtime (or SHA-256 of its bytes with ``content``); None if absent."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return {"path": str(p), "missing": True}
    st = p.stat()
    out: dict[str, Any] = {"path": str(p), "size": st.st_size}
    if content:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        out["sha256"] = digest.hexdigest()
    else:
        out["mtime_ns"] = st.st_mtime_ns
    return out


def _slug(text: str) -> str:
    from synthrel_lightning.correlation.pairs import slug

    return slug(text)


class StageCache:
    """Records under ``<root>/<stage>/<model>/<set>-<hash>.json``; ``"-"`` stands for no model or no set.

    Args:
        root: the cache folder (the study's ``<output_dir>/cache``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, stage: str, model: str | None, set_name: str | None, key: str) -> Path:
        """Where the record of (stage, model, set, key) lives."""
        return self.root / _slug(stage) / _slug(model or "-") / f"{_slug(set_name or '-')}-{key}.json"

    def get(self, stage: str, model: str | None, set_name: str | None, key: str) -> Any | None:
        """The stored payload, or None when there is no (readable) record."""
        p = self.path(stage, model, set_name, key)
        if not p.is_file():
            return None
        try:
            record = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record is recomputed, never trusted
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        return record.get("payload")

    def put(self, stage: str, model: str | None, set_name: str | None, key: str, payload: Any) -> Path:
        """Store ``payload`` (JSON data) atomically; returns the record's path."""
        record = {"stage": stage, "model": model, "set": set_name, "key": key, "payload": payload}
        return atomic_write_json(self.path(stage, model, set_name, key), record)
