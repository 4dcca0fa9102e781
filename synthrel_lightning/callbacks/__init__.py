"""Lightning callbacks: correlation, OOD visualisation, temperature scaling, epoch sync, summaries, outlier-bank refresh.

Exports resolve lazily so that importing one callback does not import the others'
dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "MetricCorrelation": "synthrel_lightning.callbacks.correlation",
    "OODVisualization": "synthrel_lightning.callbacks.visualization",
    "TemperatureScaling": "synthrel_lightning.callbacks.temperature",
    "DataEpochSync": "synthrel_lightning.callbacks.epoch_sync",
    "MetricsSummary": "synthrel_lightning.callbacks.summary",
    "PredictionWriter": "synthrel_lightning.callbacks.prediction_writer",
    "OutlierBankRefresh": "synthrel_lightning.synthesis.refresh",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
