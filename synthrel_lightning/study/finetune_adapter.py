"""The ``finetune`` stage: train the fine-tuning variants, evaluate them on the real OOD sets, write the table.

Configuration (the study's ``finetune`` section)::

    finetune:
      variants:                        # outlier source -> its training run and checkpoint
        none: {config: recipes/finetune_study_none.yaml, checkpoint: outputs/finetune/none/last.ckpt}
        coco: {config: recipes/finetune_study_coco.yaml, checkpoint: ...}
        synthetic: {config: recipes/finetune_study_synthetic.yaml, checkpoint: ...}
      sets: [road_anomaly, smiyc_anomaly]        # the table's columns (sets of the study's datamodule)
      metrics: [auroc, ap, fpr95]                # default: pixel and component metrics
      reference: null                            # published values beside ours (default: the paper's)

A variant is trained with ``fit`` (skipped while its checkpoint and recipe are unchanged), then
evaluated like a zoo model (one Lightning ``validate`` run, cached per (variant, set)), and
:func:`~synthrel_lightning.study.finetune_study.finetune_table` makes the table.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.study.context import StudyContext, ZooTraining

__all__ = ["run_finetune"]


def run_finetune(ctx: StudyContext) -> dict[str, Any]:
    """Train, evaluate and tabulate the fine-tuning variants into ``<output>/finetune``."""
    from synthrel_lightning.study.build_stages import zoo_stage
    from synthrel_lightning.study.evaluate import CachedEvaluator
    from synthrel_lightning.study.finetune_study import FINETUNE_METRICS, finetune_table

    section = dict(ctx.finetune or {})
    variants = dict(section.get("variants") or {})
    if not variants:
        raise ValueError("study: finetune: 'variants' is empty; give {none: {config, checkpoint}, ...}")
    entries, trainings = [], []
    for name, spec in variants.items():
        spec = dict(spec)
        if not spec.get("checkpoint"):
            raise ValueError(f"study: finetune: variant {name!r} has no 'checkpoint' (where its run saves)")
        entries.append(
            ZooEntry(name=f"finetune-{name}", checkpoint=spec["checkpoint"], config=spec.get("model_config"))
        )
        if spec.get("config"):
            trainings.append(ZooTraining(f"finetune-{name}", spec["config"], list(spec.get("args") or [])))
    trained = zoo_stage(replace(ctx, zoo=entries, zoo_training=trainings))
    sets = [str(s) for s in section.get("sets") or []]
    if not sets:
        raise ValueError("study: finetune: 'sets' is empty; name the real OOD sets of the table")
    evaluator = CachedEvaluator(ctx, sets, {})
    results: dict[str, Any] = {}
    failed = dict(trained["failed"])
    for name, entry in zip(variants, entries):
        if entry.name in failed:
            continue
        try:
            results[name] = evaluator(entry)
        except Exception as e:  # one variant failing leaves the others' rows
            failed[entry.name] = f"{type(e).__name__}: {e}"
    if not results:
        raise RuntimeError(f"every fine-tuning variant failed: {failed}")
    table = finetune_table(
        results,
        sets=sets,
        metrics=section.get("metrics") or FINETUNE_METRICS,
        reference=section.get("reference"),
        output_dir=ctx.stage_dir("finetune"),
    )
    return {
        "variants": table.variants,
        "lightning_runs": evaluator.runs,
        "trained": trained["trained"],
        "failed": failed,
    }
