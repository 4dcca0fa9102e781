"""Histories of (synthetic, real) metric pairs written by the MetricCorrelation callback: pool and correlate them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from synthrel_lightning.correlation.pairs import pair_key
from synthrel_lightning.correlation.statistics import METHODS, Correlation, correlate_pairs


def pool_histories(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Concatenate the records of several MetricCorrelation history files (e.g. all runs of a sweep)."""
    records: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        try:
            payload = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"history file {p} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"history file {p} is not valid JSON: {e}") from None
        recs = payload.get("records") if isinstance(payload, dict) else None
        if not isinstance(recs, list):
            raise ValueError(f"history file {p} has no 'records' list; expected a file written by MetricCorrelation")
        for r in recs:
            missing = {"synthetic", "real", "metric", "x", "y"} - set(r)
            if missing:
                raise ValueError(f"history file {p}: record {r!r} lacks {sorted(missing)}")
            records.append({**r, "source": str(p)})
    return records


def correlate_records(
    records: Sequence[Mapping[str, Any]],
    methods: Sequence[str] = METHODS,
    ci: float = 0.95,
    interval: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Correlation]]:
    """Correlations per pair key over history records (each with synthetic, real, metric, x, y)."""
    grouped: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        xs, ys = grouped.setdefault(pair_key(r["synthetic"], r["real"], r["metric"]), ([], []))
        xs.append(float(r["x"]))
        ys.append(float(r["y"]))
    return {
        k: correlate_pairs(xs, ys, methods, ci=ci, interval=interval, bootstrap=bootstrap, seed=seed)
        for k, (xs, ys) in grouped.items()
    }


__all__ = ["correlate_records", "pool_histories"]
