"""The ``evaluate`` stage: every zoo model on every evaluation set (and QC-filtered view), cached per (model, set).

Each model's missing sets are evaluated in one Lightning run
(:class:`~synthrel_lightning.correlation.evaluate.TrainerEvaluator`, i.e. ``Trainer.validate``);
if that run fails, each set is retried alone, so one broken set costs only its own results.
A model that cannot be built or fails on every set is recorded as failed and the zoo goes on
(:func:`~synthrel_lightning.correlation.evaluate.run_zoo`). Results land in a
:class:`~synthrel_lightning.correlation.results.ResultsStore`: ``<output>/evaluate`` for one
process, ``<output>/evaluate/shards/<i>-of-<n>`` for shard ``i/n``; a later run without
``--shard`` merges the shards (refusing overlapping or incomplete ones).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.correlation.evaluate import TrainerEvaluator, run_zoo
from synthrel_lightning.correlation.results import Metrics, ResultsStore
from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.study.cache import config_hash, file_fingerprint
from synthrel_lightning.study.context import QC_SUFFIX, StudyContext
from synthrel_lightning.study.shards import Shard, merge_shards, shard_dir, shard_entries, write_manifest
from synthrel_lightning.study.views import EvaluationSetsView

__all__ = ["CachedEvaluator", "evaluate_stage", "evaluation_sets", "read_failures"]

log = logging.getLogger(__name__)

STAGE = "evaluate"
FAILURES_FILE = "set_failures.json"
FILTERS_FILE = "filters.json"
"""Written by the qc stage in its folder: ``{set: {"kept": [frame names], ...}}``."""


def evaluation_sets(ctx: StudyContext) -> tuple[list[str], dict[str, tuple[str, list[str]]]]:
    """The datamodule's evaluation sets and the QC-filtered views (``<set>@qc`` -> (set, kept frames))."""
    names = [str(n) for n in ctx.datamodule().val_set_names]
    subsets: dict[str, tuple[str, list[str]]] = {}
    filters = ctx.stage_dir("qc") / FILTERS_FILE
    if filters.is_file():
        import json

        for set_name, row in json.loads(filters.read_text(encoding="utf-8")).items():
            if set_name in names and row.get("kept") is not None:
                subsets[f"{set_name}{QC_SUFFIX}"] = (set_name, [str(k) for k in row["kept"]])
    return names, subsets


def entry_fingerprint(entry: ZooEntry) -> dict[str, Any]:
    """What a zoo entry's results depend on: its definition and its files' fingerprints."""
    return {
        "entry": asdict(entry),
        "checkpoint": file_fingerprint(entry.checkpoint),
        "config": file_fingerprint(entry.config),
    }


class CachedEvaluator:
    """``entry -> {set: metrics}``: cached sets are read back, missing ones evaluated in one Lightning run.

    ``runs`` counts the Lightning evaluations made; ``set_failures`` holds (model -> set -> error)
    for sets that failed while others of the same model succeeded.
    """

    def __init__(self, ctx: StudyContext, sets: list[str], subsets: dict[str, tuple[str, list[str]]]) -> None:
        self.ctx = ctx
        self.sets = list(sets)
        self.subsets = dict(subsets)
        self.runs = 0
        self.set_failures: dict[str, dict[str, str]] = {}
        self._base = {"data": ctx.data, "trainer": ctx.trainer}

    def key(self, entry: ZooEntry, set_name: str) -> str:
        """The cache key of (entry, set): model files, data and trainer configuration, frames of a view."""
        view = self.subsets.get(set_name)
        return config_hash(self._base, entry_fingerprint(entry), set_name, view)

    def __call__(self, entry: ZooEntry) -> Metrics:
        out: Metrics = {}
        missing: list[str] = []
        for name in [*self.sets, *self.subsets]:
            hit = self.ctx.cache.get(STAGE, entry.name, name, self.key(entry, name))
            if hit is None:
                missing.append(name)
            else:
                out[name] = hit["metrics"]
        if missing:
            self._evaluate(entry, missing, out)
        return {n: out[n] for n in [*self.sets, *self.subsets] if n in out}

    def _evaluate(self, entry: ZooEntry, names: list[str], out: Metrics) -> None:
        try:
            out.update(self._validate(entry, names))
            return
        except Exception as first:
            if len(names) == 1:
                raise
            combined = f"{type(first).__name__}: {first}"
            log.warning(
                "study: %s: evaluation on %d sets failed (%s); retrying set by set", entry.name, len(names), first
            )
        errors: dict[str, str] = {}
        succeeded = 0
        for name in names:
            try:
                out.update(self._validate(entry, [name]))
                succeeded += 1
            except Exception as e:  # one broken set must not hide the others
                errors[name] = f"{type(e).__name__}: {e}"
                # The same error on two sets alone as on all of them: the model is at fault, not a set.
                if len(errors) == 2 and not succeeded and set(errors.values()) == {combined}:
                    raise RuntimeError(combined) from e
        if len(errors) == len(names):
            raise RuntimeError(f"every set failed; first: {next(iter(errors.items()))}")
        self.set_failures[entry.name] = errors

    def _validate(self, entry: ZooEntry, names: list[str]) -> Metrics:
        self.runs += 1
        view = EvaluationSetsView(
            self.ctx.datamodule(),
            [n for n in names if n not in self.subsets],
            {n: self.subsets[n] for n in names if n in self.subsets},
        )
        evaluator = TrainerEvaluator(view, self.ctx.trainer, root_dir=self.ctx.stage_dir(STAGE) / "models")
        start = time.perf_counter()
        metrics = evaluator(entry)
        seconds = (time.perf_counter() - start) / len(names)
        lacking = [n for n in names if n not in metrics]
        if lacking:
            raise ValueError(f"the model logged no val/<set>/<metric> values on {lacking}")
        for n in names:
            self.ctx.cache.put(STAGE, entry.name, n, self.key(entry, n), {"metrics": metrics[n], "seconds": seconds})
        return {n: metrics[n] for n in names}


def read_failures(folder: str | Path) -> dict[str, dict[str, str]]:
    """The (model -> set -> error) failures recorded beside a results store."""
    import json

    path = Path(folder) / FAILURES_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def evaluation_config(ctx: StudyContext, sets: list[str], subsets: dict[str, tuple[str, list[str]]]) -> str:
    """Hash of everything shards must share (data, trainer, sets and views; not the zoo, which they split)."""
    return config_hash(ctx.data, ctx.trainer, sets, subsets)


def evaluate_stage(ctx: StudyContext, shard: Shard | None = None) -> dict[str, Any]:
    """Evaluate the zoo (or shard ``shard`` of it), or merge finished shards; returns the stage's summary."""
    sets, subsets = evaluation_sets(ctx)
    eval_config = evaluation_config(ctx, sets, subsets)
    edir = ctx.stage_dir(STAGE)
    names = [e.name for e in ctx.zoo]
    summary: dict[str, Any] = {"sets": sets, "filtered_views": sorted(subsets), "config": eval_config}
    if shard is None:
        merged = merge_shards(edir, names, eval_config)
        if merged is not None:
            failures: dict[str, dict[str, str]] = {}
            for folder in sorted((edir / "shards").glob("*-of-*")):
                failures.update(read_failures(folder))
            atomic_write_json(edir / FAILURES_FILE, {n: failures[n] for n in names if n in failures})
            log.info("study: evaluate: merged the shards in %s", edir / "shards")
            return {**summary, "source": "shards", "lightning_runs": 0, "failed": merged.failed()}
        entries, folder = list(ctx.zoo), edir
    else:
        entries, folder = shard_entries(ctx.zoo, shard), shard_dir(edir, shard)
        summary["shard"] = str(shard)
    store = ResultsStore(folder)
    store.models = {}  # rebuilt from the cache: stale records of another configuration never leak in
    evaluator = CachedEvaluator(ctx, sets, subsets)
    run_zoo(entries, evaluator, store, progress=ctx.progress)
    store.save()
    atomic_write_json(folder / FAILURES_FILE, evaluator.set_failures)
    if shard is not None:
        write_manifest(folder, shard, [e.name for e in entries], eval_config)
    return {**summary, "source": "this process", "lightning_runs": evaluator.runs, "failed": store.failed()}
