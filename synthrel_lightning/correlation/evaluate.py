"""Evaluate a model zoo with ``lightning.Trainer.validate``, one model at a time, resumably and with progress.

:class:`TrainerEvaluator` evaluates one :class:`~synthrel_lightning.correlation.zoo.ZooEntry`
on the datamodule's named sets and returns every ``val/<set>/<metric>`` the module logged
(any metric: nothing here lists their names); :func:`run_zoo` runs it over the zoo,
records each result or error in a :class:`~synthrel_lightning.correlation.results.ResultsStore`
as it goes, skips the models already done and reports progress per model.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from synthrel_lightning.correlation.frame_statistics import FrameStatistics, save_frame_stats
from synthrel_lightning.correlation.pairs import slug
from synthrel_lightning.correlation.results import Metrics, ResultsStore
from synthrel_lightning.correlation.zoo import ZooEntry, instantiate_model

log = logging.getLogger(__name__)


def metrics_from_callback_metrics(callback_metrics: Mapping[str, Any], stage: str = "val") -> Metrics:
    """``{"val/<set>/<metric>": v}`` (optionally with ``/dataloader_idx_N``) -> ``{set: {metric: v}}``."""
    out: Metrics = {}
    pattern = re.compile(rf"^{re.escape(stage)}/([^/]+)/(.+?)(?:/dataloader_idx_\d+)?$")
    for key, value in callback_metrics.items():
        m = pattern.match(key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = float(value.item() if hasattr(value, "item") else value)
    return out


class TrainerEvaluator:
    """Evaluates one zoo entry with ``lightning.Trainer.validate`` on the datamodule's named sets.

    Args:
        datamodule: the LightningDataModule whose validation sets are evaluated.
        trainer: ``lightning.Trainer`` keyword arguments (accelerator, devices, precision, ...).
        frame_stats_dir: where each model's per-frame statistics go (``<dir>/<model>.npz``); none if None.
            They are saved from single-process evaluations only (with several processes each
            keeps its own shard of frames).
        frame_sets: set name -> metrics whose per-frame statistics are kept.
        root_dir: each model's own outputs (e.g. its metrics summary) go to ``<root_dir>/<model>``.
        trust_checkpoint: allow checkpoints holding arbitrary pickled objects for every entry.
    """

    def __init__(
        self,
        datamodule: Any,
        trainer: Mapping[str, Any] | None = None,
        frame_stats_dir: str | Path | None = None,
        frame_sets: Mapping[str, Sequence[str]] | None = None,
        root_dir: str | Path | None = None,
        trust_checkpoint: bool = False,
    ) -> None:
        self.datamodule = datamodule
        self.root_dir = Path(root_dir) if root_dir is not None else None
        self.trainer_kwargs = {"accelerator": "auto", "devices": 1, **dict(trainer or {})}
        self.frame_stats_dir = Path(frame_stats_dir) if frame_stats_dir is not None else None
        self.frame_sets = dict(frame_sets or {})
        self.trust_checkpoint = trust_checkpoint

    def __call__(self, entry: ZooEntry) -> Metrics:
        """Evaluate one entry; also saves its per-frame statistics when configured."""
        import lightning as L

        model = instantiate_model(entry, trust_checkpoint=self.trust_checkpoint)
        callbacks: list[Any] = []
        collector = None
        if self.frame_stats_dir is not None and self.frame_sets:
            collector = FrameStatistics(
                self.frame_sets,
                num_classes=int(getattr(model, "num_classes", 19)),
                ece_bins=int(getattr(model, "calibration_bins", 15)),
            )
            callbacks.append(collector)
        kwargs = {
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **self.trainer_kwargs,
        }
        if self.root_dir is not None and "default_root_dir" not in kwargs:
            kwargs["default_root_dir"] = str(self.root_dir / slug(entry.name))
        trainer = L.Trainer(callbacks=callbacks, **kwargs)
        trainer.validate(model, datamodule=self.datamodule, verbose=False)
        metrics = metrics_from_callback_metrics(trainer.callback_metrics)
        if collector is not None and trainer.world_size > 1:
            # Each process kept the frames of its own shard: a partial file would bias the curves.
            log.warning(
                "correlate: %s: per-frame statistics are not saved with %d processes (each saw only its shard); "
                "evaluate on one device for subsampling curves",
                entry.name,
                trainer.world_size,
            )
        elif collector is not None and self.frame_stats_dir is not None:  # a collector implies the folder
            save_frame_stats(self.frame_stats_dir / f"{slug(entry.name)}.npz", collector.arrays())
        return metrics


def _check_metrics(name: str, metrics: Any) -> None:
    if not isinstance(metrics, Mapping) or not all(isinstance(v, Mapping) for v in metrics.values()):
        raise TypeError(
            f"evaluation of {name!r} returned {type(metrics).__name__}; expected {{set: {{metric: value}}}}"
        )
    if not metrics:
        raise ValueError(f"evaluation of {name!r} logged no val/<set>/<metric> values")


def _evaluate_one(entry: ZooEntry, tag: str, evaluate_fn: Callable[[ZooEntry], Metrics], store: ResultsStore) -> bool:
    log.info("correlate: %s: evaluating", tag)
    start = time.perf_counter()
    try:
        metrics = evaluate_fn(entry)
        _check_metrics(entry.name, metrics)
    except Exception as e:  # one bad model must not stop the zoo
        err = f"{type(e).__name__}: {e}"
        log.error("correlate: %s: failed: %s", tag, err)
        log.debug("%s", traceback.format_exc())
        store.record_failed(entry.name, err, time.perf_counter() - start, asdict(entry))
        return False
    seconds = time.perf_counter() - start
    store.record_ok(entry.name, metrics, seconds, asdict(entry))
    count = sum(len(v) for v in metrics.values())
    log.info("correlate: %s: %d metrics on %d sets in %.1f s", tag, count, len(metrics), seconds)
    return True


def run_zoo(
    entries: Sequence[ZooEntry],
    evaluate_fn: Callable[[ZooEntry], Metrics],
    store: ResultsStore,
    retry_failed: bool = True,
    progress: bool = True,
) -> ResultsStore:
    """Evaluate each entry not yet done with ``evaluate_fn``; failures are recorded and the loop goes on.

    Each model's start and outcome are logged at INFO (``[i/N] name: ...``); ``progress``
    also shows a progress bar.
    """
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"zoo names must be unique; repeated: {dupes}")
    todo = [e for e in entries if not store.is_done(e.name) and (retry_failed or e.name not in store.models)]
    skipped = len(entries) - len(todo)
    if skipped:
        log.info("correlate: %d of %d models already in %s, skipped", skipped, len(entries), store.json_path)
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    failed = 0
    # With a progress bar, log lines go above it instead of through it.
    redirect = logging_redirect_tqdm([logging.getLogger("synthrel_lightning")]) if progress else nullcontext()
    with redirect, tqdm(total=len(entries), initial=skipped, desc="models", unit="model", disable=not progress) as bar:
        for i, entry in enumerate(todo, start=skipped + 1):
            bar.set_postfix_str(entry.name)
            failed += not _evaluate_one(entry, f"[{i}/{len(entries)}] {entry.name}", evaluate_fn, store)
            bar.update(1)
    if failed:
        log.warning("correlate: %d model(s) failed; see 'error' in %s", failed, store.json_path)
    return store


__all__ = ["TrainerEvaluator", "metrics_from_callback_metrics", "run_zoo"]
