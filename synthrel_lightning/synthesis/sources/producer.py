"""A picklable recipe for a source built in another process (the background bank refresh)."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from synthrel_lightning.synthesis.sources.base import OutlierSource

__all__ = ["ProducerSpec", "instantiate"]


@dataclass
class ProducerSpec:
    """A picklable recipe for an outlier source built inside another process: class path + arguments.

    ``class_path`` is a dotted path (``"synthrel_lightning.synthesis.ProceduralObjectSource"``,
    or an engine-backed producer); a ``device`` argument is filled in when the class
    accepts one and ``init_args`` does not set it.
    """

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)

    def build(self, device: str | None = None) -> OutlierSource:
        """Import the class and instantiate it (nested ``{class_path, init_args}`` arguments are built first)."""
        cls = _import(self.class_path)
        kwargs = {k: instantiate(v) for k, v in self.init_args.items()}
        if device is not None and "device" not in kwargs:
            try:
                if "device" in inspect.signature(cls).parameters:
                    kwargs["device"] = device
            except (TypeError, ValueError):
                pass
        source = cls(**kwargs)
        if not callable(getattr(source, "sample", None)):
            raise TypeError(f"ProducerSpec: {self.class_path} instances have no sample(rng) method")
        return source


def _import(class_path: str) -> Any:
    module_name, _, attr = str(class_path).rpartition(".")
    if not module_name:
        raise ValueError(f"ProducerSpec: a class path must be dotted 'package.module.Class', got {class_path!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"ProducerSpec: cannot import {class_path!r}: {e}") from e


def instantiate(value: Any) -> Any:
    """``value`` with every ``{"class_path": ..., "init_args": {...}}`` mapping in it replaced by that object.

    This is how a producer receives its datasets (e.g. a ``CityscapesDataset``) from YAML while the
    synthesis code itself never builds datasets from paths.
    """
    if isinstance(value, dict):
        if "class_path" in value and set(value) <= {"class_path", "init_args"}:
            args = {k: instantiate(v) for k, v in dict(value.get("init_args") or {}).items()}
            return _import(value["class_path"])(**args)
        return {k: instantiate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [instantiate(v) for v in value]
    return value
