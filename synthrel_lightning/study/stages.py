"""The stages of a study, in order, and how each is run, cached and recorded.

``sets -> zoo -> qc -> evaluate -> correlate -> calibration -> finetune -> report``. Every
stage writes a record ``<output>/stages/<stage>.json`` (status, seconds, summary, error,
and the hash of its inputs). A stage whose inputs hash as in its last successful record is
skipped; within a stage, work is cached per (model, set, configuration) in
:class:`~synthrel_lightning.study.cache.StageCache`, so an interrupted stage resumes where it
stopped. A failing stage is recorded and the next ones still run on what exists.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.study.cache import config_hash
from synthrel_lightning.study.context import StudyContext
from synthrel_lightning.study.records import STAGES, StageOutcome, read_json_file, read_record, stage_record_path
from synthrel_lightning.study.shards import ShardError

__all__ = ["STAGES", "StageOutcome", "read_record", "run_stages", "stage_record_path"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- registry
def _stage_functions() -> dict[str, Callable[[StudyContext], dict[str, Any]]]:
    from synthrel_lightning.study.analysis import calibration_stage, correlate_stage, finetune_stage
    from synthrel_lightning.study.build_stages import sets_stage, zoo_stage
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
        results = _scrub(read_json_file(out / "evaluate" / "results.json"))
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
            "ok" if st == "cached" else st for st in ((read_record(ctx, s) or {}).get("status") for s in STAGES[:-1])
        ]
        return [ctx.report, records, [_scrub(read_json_file(out / f)) for f in outputs]]
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
