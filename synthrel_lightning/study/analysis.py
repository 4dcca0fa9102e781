"""The study's analysis stages over the zoo's results: correlation (unfiltered and QC-filtered side by side),
the calibration study and the fine-tuning table.

``correlate`` reuses :func:`~synthrel_lightning.correlation.pairs.correlate_results` on the
``evaluate`` stage's :class:`~synthrel_lightning.correlation.results.ResultsStore`: every pair
of the configuration, and for each synthetic set with a QC-filtered view ``<set>@qc`` the same
pair on that view, so the report can put both correlations side by side.
"""

from __future__ import annotations

import logging
from typing import Any

from synthrel_lightning.correlation.pairs import Pair, correlate_results
from synthrel_lightning.correlation.results import ResultsStore
from synthrel_lightning.study.context import QC_SUFFIX, StudyContext

__all__ = ["calibration_stage", "correlate_stage", "finetune_stage", "filtered_pairs"]

log = logging.getLogger(__name__)


def filtered_pairs(pairs: list[Pair], results: dict[str, Any]) -> list[Pair]:
    """The configured pairs, each followed by its QC-filtered twin when the results hold ``<synthetic>@qc``."""
    logged = {s for m in results.values() for s in m}
    out = []
    for p in pairs:
        out.append(p)
        view = f"{p.synthetic}{QC_SUFFIX}"
        if view in logged:
            out.append(Pair(view, p.real, list(p.metrics)))
    return out


def correlate_stage(ctx: StudyContext) -> dict[str, Any]:
    """Correlate synthetic and real scores across the zoo; writes ``<output>/correlate/correlations.{json,csv}``."""
    store = ResultsStore(ctx.stage_dir("evaluate"))
    results = store.ok_metrics()
    if not results:
        raise RuntimeError(f"no evaluated model in {store.json_path}; run the evaluate stage first")
    pairs = filtered_pairs(ctx.pairs, results)
    options = {k: v for k, v in ctx.correlation.items() if k in ("methods", "ci", "interval", "bootstrap", "seed")}
    rows = correlate_results(results, pairs, ctx.stage_dir("correlate"), **options)
    return {"pairs": len(pairs), "rows": len(rows), "models": len(results)}


def calibration_stage(ctx: StudyContext) -> dict[str, Any]:
    """The calibration study (temperature fitted on synthetic domains, scored on real ones), when configured."""
    if not ctx.calibration:
        return {"skipped": "no calibration section in the study configuration"}
    from synthrel_lightning.study.calibration_adapter import run_calibration

    return run_calibration(ctx)


def finetune_stage(ctx: StudyContext) -> dict[str, Any]:
    """The fine-tuning table (no outliers / COCO pastes / synthetic outliers), when configured."""
    if not ctx.finetune:
        return {"skipped": "no finetune section in the study configuration"}
    from synthrel_lightning.study.finetune_adapter import run_finetune

    return run_finetune(ctx)
