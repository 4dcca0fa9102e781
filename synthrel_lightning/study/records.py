"""The study's stage names, each stage's record on disk, and the class-path import its configurations use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from synthrel_lightning.study.context import StudyContext

STAGES: tuple[str, ...] = ("sets", "zoo", "qc", "evaluate", "correlate", "calibration", "finetune", "report")
"""The study's stages, in the order they run."""


@dataclass
class StageOutcome:
    """What one stage did: ``ok``, ``cached`` (inputs unchanged), ``partial`` (some items failed), ``failed``."""

    stage: str
    status: str
    seconds: float
    summary: dict[str, Any]
    error: str = ""


def stage_record_path(ctx: StudyContext, stage: str) -> Path:
    """Where a stage's record lives."""
    return ctx.output_dir / "stages" / f"{stage}.json"


def read_record(ctx: StudyContext, stage: str) -> dict[str, Any] | None:
    """The last record of ``stage``, if any."""
    path = stage_record_path(ctx, stage)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def read_json_file(path: Path) -> Any:
    """The JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def import_class(class_path: str) -> Any:
    """The object a dotted ``package.module.Name`` path names."""
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"class_path {class_path!r} is not a dotted path (package.module.Name)")
    return getattr(import_module(module), name)


__all__ = ["STAGES", "StageOutcome", "import_class", "read_json_file", "read_record", "stage_record_path"]
