"""Proxy validity: do a model's scores on synthetic sets predict its scores on real ones?

One idea per module:

- :mod:`~synthrel_lightning.correlation.statistics`: Pearson / Spearman / Kendall with exact
  small-sample p-values and intervals, and a warning below 8 models.
- :mod:`~synthrel_lightning.correlation.zoo`: zoo entries and how each becomes a model (safe checkpoint loading).
- :mod:`~synthrel_lightning.correlation.evaluate`: zoo evaluation with ``Trainer.validate``, with progress.
- :mod:`~synthrel_lightning.correlation.results`: the resumable ``results.json`` / ``results.csv``.
- :mod:`~synthrel_lightning.correlation.pairs`: correlations per (synthetic, real, metric) pair.
- :mod:`~synthrel_lightning.correlation.frame_statistics`: per-frame statistics callback.
- :mod:`~synthrel_lightning.correlation.subsampling`: correlation against the number of synthetic frames.
- :mod:`~synthrel_lightning.correlation.histories`: pooled histories of the MetricCorrelation callback.
- :mod:`~synthrel_lightning.correlation.plots`: labelled scatter plots and subsampling curves.
- :mod:`~synthrel_lightning.correlation.study`: the whole ``correlate`` workflow and its report.

Exports resolve lazily, so importing one piece does not import Lightning or matplotlib.
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "METHODS": ".statistics",
    "Correlation": ".statistics",
    "correlate_pairs": ".statistics",
    "format_correlation": ".statistics",
    "ZooEntry": ".zoo",
    "instantiate_model": ".zoo",
    "TrainerEvaluator": ".evaluate",
    "run_zoo": ".evaluate",
    "ResultsStore": ".results",
    "Pair": ".pairs",
    "correlate_results": ".pairs",
    "pair_key": ".pairs",
    "FrameStatistics": ".frame_statistics",
    "CurvePoint": ".statistics",
    "subsample_curve": ".subsampling",
    "subsampling_outputs": ".subsampling",
    "correlate_records": ".histories",
    "pool_histories": ".histories",
    "curve_figure": ".plots",
    "scatter_figure": ".plots",
    "StudyReport": ".study",
    "run_study": ".study",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
