"""The stages of a study, in order, and how each is run, cached and recorded.

``sets -> zoo -> qc -> evaluate -> correlate -> calibration -> finetune -> report``. Every
stage writes a record ``<output>/stages/<stage>.json`` (status, seconds, summary, error,
and the hash of its inputs). A stage whose inputs hash as in its last successful record is
skipped; within a stage, work is cached per (model, set, configuration) in
:class:`~synthrel_lightning.study.cache.StageCache`, so an interrupted stage resumes where it
stopped. A failing stage is recorded and the next ones still run on what exists.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.study.cache import config_hash, file_fingerprint
from synthrel_lightning.study.context import StudyContext
from synthrel_lightning.study.shards import ShardError

__all__ = ["STAGES", "StageOutcome", "read_record", "run_stages", "stage_record_path"]

log = logging.getLogger(__name__)

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


def _file_content(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- sets and zoo
def _call_tool(command: Sequence[str]) -> None:
    from synthrel_lightning.cli import main

    try:
        main(list(command))
    except SystemExit as e:
        if e.code not in (0, None):
            raise RuntimeError(f"`python -m synthrel_lightning {' '.join(command)}` exited with status {e.code}") from e


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"class_path {class_path!r} is not a dotted path (package.module.Name)")
    return getattr(import_module(module), name)


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
                _import(spec["class_path"])(**dict(spec.get("init_args") or {}))()
            elif item.command:
                _call_tool(item.command)
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
            from synthrel_lightning.cli import DEMO_CONFIG

            config = str(DEMO_CONFIG)
        key = config_hash(asdict(item), ctx.fit_args, file_fingerprint(config, content=True))
        record = ctx.cache.get("zoo", item.name, None, key)
        if record is not None and record.get("checkpoint") == file_fingerprint(entry.checkpoint):
            cached.append(item.name)
            continue
        try:
            _call_tool(["fit", "--config", config, *item.args, *ctx.fit_args])
            if not Path(entry.checkpoint).is_file():
                raise FileNotFoundError(f"fit ran but wrote no checkpoint at {entry.checkpoint}")
        except Exception as e:
            failed[item.name] = f"{type(e).__name__}: {e}"
            log.error("study: zoo: training %s failed: %s", item.name, failed[item.name])
            continue
        ctx.cache.put("zoo", item.name, None, key, {"checkpoint": file_fingerprint(entry.checkpoint)})
        trained.append(item.name)
    return {"trained": trained, "cached": cached, "failed": failed}


# ----------------------------------------------------------------------------- registry
def _stage_functions() -> dict[str, Callable[[StudyContext], dict[str, Any]]]:
    from synthrel_lightning.study.analysis import calibration_stage, correlate_stage, finetune_stage
    from synthrel_lightning.study.evaluate import evaluate_stage
    from synthrel_lightning.study.qc_stage import qc_stage
    from synthrel_lightning.study.report import report_stage

    return {
        "sets": sets_stage,
        "zoo": zoo_stage,
        "qc": qc_stage,
        "evaluate": evaluate_stage,
        "correlate": correlate_stage,
        "calibration": calibration_stage,
        "finetune": finetune_stage,
        "report": report_stage,
    }


VOLATILE: frozenset[str] = frozenset({"seconds", "computed", "finished", "updated", "lightning_runs", "source"})
"""Record fields that change from run to run without changing a result (timings, work counts)."""


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _inputs(ctx: StudyContext, stage: str) -> Any:
    """What a stage's result depends on (timings left out); None: always run (the stage caches its items)."""
    out = ctx.output_dir
    if stage == "correlate":
        results = _scrub(_file_content(out / "evaluate" / "results.json"))
        return [results, [asdict(p) for p in ctx.pairs], ctx.correlation]
    if stage == "report":
        outputs = [
            "evaluate/results.json",
            "evaluate/set_failures.json",
            "correlate/correlations.json",
            "calibration/calibration_study.json",
            "finetune/finetune_table.json",
            "qc/filters.json",
            "qc/summaries.json",
        ]
        # "cached" is the same result as the "ok" that made it.
        records = [
            {"cached": "ok"}.get(st, st) for st in ((read_record(ctx, s) or {}).get("status") for s in STAGES[:-1])
        ]
        return [ctx.report, records, [_scrub(_file_content(out / f)) for f in outputs]]
    return None


def _record(ctx: StudyContext, outcome: StageOutcome, key: str | None) -> None:
    payload = {**asdict(outcome), "key": key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(stage_record_path(ctx, outcome.stage), payload)


def run_stages(
    ctx: StudyContext, stages: Sequence[str] = STAGES, force: bool = False, **stage_kwargs: Any
) -> list[StageOutcome]:
    """Run ``stages`` in study order; each failure is recorded and the following stages still run.

    ``force`` reruns a stage even when its inputs are unchanged (its item caches still apply).
    ``stage_kwargs`` go to the evaluate stage (``shard``).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"study: unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    functions = _stage_functions()
    outcomes = []
    for stage in [s for s in STAGES if s in stages]:
        inputs = _inputs(ctx, stage)
        key = None if inputs is None else config_hash(inputs)
        last = read_record(ctx, stage)
        if not force and key is not None and last and last.get("key") == key and last.get("status") in ("ok", "cached"):
            outcome = StageOutcome(stage, "cached", 0.0, last.get("summary") or {})
            log.info("study: %s: inputs unchanged, kept", stage)
            _record(ctx, outcome, key)
            outcomes.append(outcome)
            continue
        log.info("study: %s: running", stage)
        start = time.perf_counter()
        try:
            fn = functions[stage]
            summary = fn(ctx, **stage_kwargs) if stage == "evaluate" else fn(ctx)
            failed = summary.get("failed") if isinstance(summary, dict) else None
            status = "partial" if failed else "ok"
            outcome = StageOutcome(stage, status, round(time.perf_counter() - start, 3), summary or {})
        except ShardError as e:  # refused merge: the study cannot go on from a wrong zoo result
            outcome = StageOutcome(stage, "failed", round(time.perf_counter() - start, 3), {}, f"ShardError: {e}")
            _record(ctx, outcome, None)
            raise
        except Exception as e:  # a failed stage is reported; the others go on
            log.error("study: %s failed: %s: %s", stage, type(e).__name__, e)
            log.debug("%s", traceback.format_exc())
            outcome = StageOutcome(
                stage, "failed", round(time.perf_counter() - start, 3), {}, f"{type(e).__name__}: {e}"
            )
        _record(ctx, outcome, key if outcome.status == "ok" else None)
        outcomes.append(outcome)
    return outcomes
