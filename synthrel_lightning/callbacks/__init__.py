"""Lightning callbacks: correlation, OOD visualisation, temperature scaling, epoch sync, summaries, bank refresh.

Exports resolve lazily so that importing one callback does not import the others'
dependencies.
"""

from __future__ import annotations

from synthrel_lightning._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "MetricCorrelation": "synthrel_lightning.callbacks.correlation",
    "OODVisualization": "synthrel_lightning.callbacks.visualization",
    "TemperatureScaling": "synthrel_lightning.callbacks.temperature",
    "DataEpochSync": "synthrel_lightning.callbacks.epoch_sync",
    "MetricsSummary": "synthrel_lightning.callbacks.summary",
    "ReliabilityPlots": "synthrel_lightning.callbacks.reliability_plots",
    "PredictionWriter": "synthrel_lightning.callbacks.prediction_writer",
    "SMLStatistics": "synthrel_lightning.callbacks.sml_statistics",
    "OutlierBankRefresh": "synthrel_lightning.synthesis.refresh",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
