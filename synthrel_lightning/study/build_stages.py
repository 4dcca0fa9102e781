"""The first stages of a study: build the configured sets, train the configured zoo models.

Tools (``domains``, ``generate``, ``fit``...) run through the context's ``tool_runner``: the
``study`` command runs them in its own process; from Python, without one, each runs as
``python -m synthrel_lightning <tool>`` in a subprocess.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synthrel_lightning.packaged import DEMO_CONFIG
from synthrel_lightning.study.cache import config_hash, file_fingerprint
from synthrel_lightning.study.context import StudyContext
from synthrel_lightning.study.records import import_class

log = logging.getLogger(__name__)


def subprocess_tool_runner(command: Sequence[str]) -> None:
    """Run ``python -m synthrel_lightning <command>`` in a subprocess; a RuntimeError on a non-zero status."""
    done = subprocess.run([sys.executable, "-m", "synthrel_lightning", *command], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`python -m synthrel_lightning {' '.join(command)}` exited with status {done.returncode}")


def _call_tool(ctx: StudyContext, command: Sequence[str]) -> None:
    (ctx.tool_runner or subprocess_tool_runner)(list(command))


def sets_stage(ctx: StudyContext) -> dict[str, Any]:
    """Build every configured set that is not built yet (a builder or a tool command per set)."""
    built, cached, failed = [], [], {}
    for item in ctx.sets:
        key = config_hash(asdict(item))
        if ctx.cache.get("sets", None, item.name, key) is not None:
            cached.append(item.name)
            continue
        try:
            if item.builder is not None:
                spec = dict(item.builder)
                import_class(spec["class_path"])(**dict(spec.get("init_args") or {}))()
            elif item.command:
                _call_tool(ctx, item.command)
            else:
                raise ValueError("has neither builder nor command")
        except Exception as e:  # one set failing must not stop the others
            failed[item.name] = f"{type(e).__name__}: {e}"
            log.error("study: sets: %s failed: %s", item.name, failed[item.name])
            continue
        ctx.cache.put("sets", None, item.name, key, {"built": True})
        built.append(item.name)
    return {"built": built, "cached": cached, "failed": failed}


def zoo_stage(ctx: StudyContext) -> dict[str, Any]:
    """Train the zoo models configured for training whose checkpoint is missing or stale."""
    entries = {e.name: e for e in ctx.zoo}
    trained, cached, failed = [], [], {}
    for item in ctx.zoo_training:
        entry = entries.get(item.name)
        if entry is None or not entry.checkpoint:
            failed[item.name] = "no zoo entry of that name with a 'checkpoint' path to train into"
            continue
        config = item.config
        if config == "demo":
            config = str(DEMO_CONFIG)
        key = config_hash(asdict(item), ctx.fit_args, file_fingerprint(config, content=True))
        record = ctx.cache.get("zoo", item.name, None, key)
        if record is not None and record.get("checkpoint") == file_fingerprint(entry.checkpoint):
            cached.append(item.name)
            continue
        try:
            _call_tool(ctx, ["fit", "--config", config, *item.args, *ctx.fit_args])
            if not Path(entry.checkpoint).is_file():
                raise FileNotFoundError(f"fit ran but wrote no checkpoint at {entry.checkpoint}")
        except Exception as e:
            failed[item.name] = f"{type(e).__name__}: {e}"
            log.error("study: zoo: training %s failed: %s", item.name, failed[item.name])
            continue
        ctx.cache.put("zoo", item.name, None, key, {"checkpoint": file_fingerprint(entry.checkpoint)})
        trained.append(item.name)
    return {"trained": trained, "cached": cached, "failed": failed}


__all__ = ["sets_stage", "subprocess_tool_runner", "zoo_stage"]
