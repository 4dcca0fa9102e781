"""A whole correlation study: evaluate the zoo, correlate each pair, draw the subsampling curves, report the files.

:func:`run_study` is what ``python -m synthrel_lightning correlate`` runs; its signature
is the command's options.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L

from synthrel_lightning.correlation.evaluate import TrainerEvaluator, run_zoo
from synthrel_lightning.correlation.frame_statistics import FRAME_REDUCERS
from synthrel_lightning.correlation.pairs import Pair, correlate_results
from synthrel_lightning.correlation.results import Metrics, ResultsStore
from synthrel_lightning.correlation.statistics import METHODS, Correlation, format_correlation
from synthrel_lightning.correlation.subsampling import subsampling_outputs
from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.ranks import global_rank

log = logging.getLogger(__name__)


@dataclass
class StudyReport:
    """What a study computed and which files it wrote (``files``: kind -> paths).

    ``primary`` is False on the processes other than global rank 0 of a multi-process run: they
    took part in the evaluations only, and their report is empty.
    """

    output_dir: Path
    results: dict[str, Metrics]
    correlations: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    failed: dict[str, str]
    files: dict[str, list[str]] = field(default_factory=dict)
    primary: bool = True

    def lines(self) -> list[str]:
        """The correlation of each pair, one line per method (warnings included)."""
        out = []
        for row in self.correlations:
            c = Correlation(**{k: row[k] for k in Correlation.__dataclass_fields__})
            out.append(f"{row['pair']}: {format_correlation(c)}")
        for warning in dict.fromkeys(r["warning"] for r in self.correlations if r.get("warning")):
            out.append(f"warning: {warning}")
        return out

    def summary(self) -> str:
        """A short report of what was written where."""
        total = len(self.results) + len(self.failed)
        head = f"correlate: {len(self.results)} of {total} models evaluated"
        head += f" ({len(self.failed)} failed)" if self.failed else ""
        rows = [f"{head}; outputs in {self.output_dir}"]
        for kind, paths in self.files.items():
            parents = {str(Path(p).parent) for p in paths}
            if len(paths) > 3 and len(parents) == 1:
                what = "folders" if all(Path(p).is_dir() for p in paths) else "files"
                rows.append(f"  {kind}: {len(paths)} {what} in {parents.pop()}")
            elif paths:
                rows.append(f"  {kind}: {', '.join(paths)}")
        return "\n".join(rows)


def _existing(paths: list[Path]) -> list[str]:
    return [str(p) for p in paths if p.exists()]


def run_study(
    zoo: list[ZooEntry],
    data: L.LightningDataModule,
    pairs: list[Pair],
    output_dir: str = "outputs/correlate",
    trainer: dict[str, Any] | None = None,
    methods: Sequence[str] = METHODS,
    ci: float = 0.95,
    interval: Literal["auto", "copula", "fisher_z", "bootstrap"] = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
    retry_failed: bool = True,
    subsample: bool = True,
    subsample_sizes: list[int] | None = None,
    subsample_repeats: int = 20,
    progress: bool = True,
    trust_checkpoint: bool = False,
) -> StudyReport:
    """Evaluate a model zoo on paired synthetic/real sets and correlate the scores.

    Args:
        zoo: the models: name + checkpoint and/or model definition/config.
        data: a LightningDataModule with named validation sets.
        pairs: (synthetic set, real set, metrics) to correlate; any metric the evaluation logs.
        output_dir: where results, correlations, plots and per-frame statistics go.
        trainer: ``lightning.Trainer`` keyword arguments (accelerator, devices, strategy, precision, ...).
        methods: correlation methods (pearson, spearman, kendall).
        ci: confidence level of the intervals.
        interval: interval method: auto (exact small-sample intervals below 8 models, Fisher-z
            from 8 on), copula, fisher_z or bootstrap.
        bootstrap: resamples of the bootstrap interval.
        seed: seed of the Monte Carlo, bootstrap and subsampling draws.
        retry_failed: re-evaluate models recorded as failed in an earlier run.
        subsample: keep per-frame statistics and draw the correlation against the number of synthetic frames.
        subsample_sizes: subset sizes of the subsampling curves (default: 5% ... 100% of the frames).
        subsample_repeats: random subsets per size.
        progress: show a progress bar.
        trust_checkpoint: load checkpoints holding arbitrary pickled objects (can run code: trusted files only).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame_sets: dict[str, list[str]] = {}
    for p in pairs:
        wanted = [m for m in p.metrics if m in FRAME_REDUCERS]
        if wanted:
            frame_sets.setdefault(p.synthetic, []).extend(wanted)
    evaluator = TrainerEvaluator(
        data,
        trainer,
        out / "frame_stats" if subsample else None,
        frame_sets,
        root_dir=out / "models",
        trust_checkpoint=trust_checkpoint,
    )
    primary = global_rank() == 0
    store = ResultsStore(out, writable=primary)
    store = run_zoo(zoo, evaluator, store, retry_failed=retry_failed, progress=progress and primary)
    if not primary:
        # With several devices every process takes part in each evaluation; the correlations,
        # plots, files and report are made once, by global rank 0.
        return StudyReport(out, {}, [], [], {}, {}, primary=False)
    results = store.ok_metrics()
    log.info("correlate: correlating %d pairs over %d models", len(pairs), len(results))
    correlations = correlate_results(
        results, pairs, out, methods, ci=ci, interval=interval, bootstrap=bootstrap, seed=seed
    )
    curves = (
        subsampling_outputs(results, pairs, out, subsample_sizes, subsample_repeats, seed=seed) if subsample else []
    )
    plots = list(dict.fromkeys(p for r in [*correlations, *curves] for p in r.get("plot_files") or []))
    files = {
        "results": _existing([store.json_path, store.csv_path]),
        "correlations": _existing([out / "correlations.json", out / "correlations.csv"]),
        "plots (PNG, SVG, PDF)": plots,
        "subsampling curves": _existing([out / "subsample.json"]),
        "per-frame statistics": sorted(str(p) for p in (out / "frame_stats").glob("*.npz")),
        "per-model outputs": sorted(str(p) for p in (out / "models").glob("*") if p.is_dir()),
    }
    return StudyReport(out, results, correlations, curves, store.failed(), files)


__all__ = ["StudyReport", "run_study"]
