"""Correlate paired sets across the models of a study: one row per (synthetic set, real set, metric, method).

:func:`correlate_results` reads any metric the evaluation logged (``val/<set>/<metric>``;
nothing here lists metric names), writes ``correlations.json`` / ``correlations.csv`` and
one labelled scatter plot per pair (PNG, SVG, PDF).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json, atomic_write_text
from synthrel_lightning.correlation.results import Metrics
from synthrel_lightning.correlation.statistics import METHODS, correlate_pairs

log = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "synthetic",
    "real",
    "metric",
    "method",
    "n",
    "status",
    "coefficient",
    "ci_low",
    "ci_high",
    "interval",
    "p_value",
    "p_method",
    "message",
    "warning",
)
"""Columns of ``correlations.csv``."""


@dataclass
class Pair:
    """A synthetic evaluation set, its real counterpart, and the metrics (any logged name) to correlate."""

    synthetic: str
    real: str
    metrics: list[str] = field(default_factory=lambda: ["miou"])


def pair_key(synthetic: str, real: str, metric: str) -> str:
    """Key naming one (synthetic set, real set, metric) pair: ``synthetic~real/metric``."""
    return f"{synthetic}~{real}/{metric}"


def slug(text: str) -> str:
    """A file-name-safe form of a pair key or model name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("~", "-vs-"))


def _points(
    results: Mapping[str, Metrics], pair: Pair, metric: str
) -> tuple[list[str], list[float], list[float], list[str]]:
    names, xs, ys, missing = [], [], [], []
    for model, m in results.items():
        x = m.get(pair.synthetic, {}).get(metric)
        y = m.get(pair.real, {}).get(metric)
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            missing.append(model)
            continue
        names.append(model)
        xs.append(float(x))
        ys.append(float(y))
    return names, xs, ys, missing


def _available(results: Mapping[str, Metrics], set_name: str) -> list[str]:
    return sorted({k for m in results.values() for k in m.get(set_name, {})})


def correlate_results(
    results: Mapping[str, Metrics],
    pairs: Sequence[Pair],
    output_dir: str | Path,
    methods: Sequence[str] = METHODS,
    ci: float = 0.95,
    interval: str = "auto",
    bootstrap: int = 1000,
    seed: int = 0,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Per-pair correlations across models -> correlations.json/.csv and scatter plots; returns the rows."""
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        for metric in pair.metrics:
            key = pair_key(pair.synthetic, pair.real, metric)
            names, xs, ys, missing = _points(results, pair, metric)
            if missing and results:
                unknown = [
                    f"{s} (logged there: {', '.join(_available(results, s)) or 'nothing'})"
                    for s in (pair.synthetic, pair.real)
                    if metric not in _available(results, s)
                ]
                why = f"{metric} was never logged on {'; '.join(unknown)}" if unknown else "missing or not finite"
                log.warning("correlate: %s: %s for models %s", key, why, missing)
            corr = correlate_pairs(xs, ys, methods, ci=ci, interval=interval, bootstrap=bootstrap, seed=seed)
            warning = next((c.warning for c in corr.values() if c.warning), "")
            if warning:
                log.warning("correlate: %s: %s", key, warning)
            plot_files: list[str] = []
            if plots and xs:
                from synthrel_lightning.correlation.plots import scatter_figure
                from synthrel_lightning.figures import save_figure

                fig = scatter_figure(
                    xs,
                    ys,
                    names,
                    corr,
                    xlabel=f"{pair.synthetic} {metric} (synthetic)",
                    ylabel=f"{pair.real} {metric} (real)",
                    title=key,
                )
                plot_files = [str(p) for p in save_figure(fig, out / "plots" / f"scatter_{slug(key)}.png")]
            for c in corr.values():
                rows.append(
                    {
                        "pair": key,
                        "synthetic": pair.synthetic,
                        "real": pair.real,
                        "metric": metric,
                        **c.to_dict(),
                        "models": names,
                        "missing_models": missing,
                        "plot": plot_files[0] if plot_files else None,
                        "plot_files": plot_files,
                    }
                )
    atomic_write_json(out / "correlations.json", {"correlations": rows})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else r[c] for c in CSV_COLUMNS])
    atomic_write_text(out / "correlations.csv", buf.getvalue())
    return rows


__all__ = ["CSV_COLUMNS", "Pair", "correlate_results", "pair_key", "slug"]
