"""Fractions of models a calibration flag marks improved, with a percentile bootstrap interval over models.

Used by :mod:`synthrel_lightning.study.calibration_study`: a model counts once whatever its
number of pairs; the bootstrap resamples models with replacement (each keeping all its
flags), seeded, and reports the percentile interval of the pooled fraction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALL_PAIRS = "all"
"""The ``pair`` of a summary pooled over every pair."""


@dataclass
class FractionImproved:
    """The fraction of models whose real-domain value a flag marks improved, with its bootstrap interval."""

    pair: str
    method: str
    flag: str
    models: int
    improved: int
    total: int
    fraction: float
    ci_low: float
    ci_high: float
    ci: float
    bootstrap: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values."""
        return asdict(self)


SUMMARY_COLUMNS: tuple[str, ...] = tuple(FractionImproved.__dataclass_fields__)
"""Columns of ``calibration_summary.csv``."""


def bootstrap_fraction(
    flags: Mapping[str, Sequence[bool]], ci: float = 0.95, bootstrap: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Fraction of True flags and its percentile bootstrap interval, resampling models (each keeps its flags).

    ``flags`` maps a model to its flags (one per pair). Returns ``(fraction, low, high)``.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1, got {bootstrap!r}")
    per_model = [(sum(map(bool, f)), len(f)) for f in flags.values() if len(f)]
    if not per_model:
        return math.nan, math.nan, math.nan
    hits = np.array([h for h, _ in per_model], dtype=np.float64)
    counts = np.array([n for _, n in per_model], dtype=np.float64)
    fraction = float(hits.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_model), size=(int(bootstrap), len(per_model)))
    stats = hits[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return fraction, float(low), float(high)


def fraction_improved(
    rows: Sequence[Any],
    method: str = "ece_grid",
    pair: str = ALL_PAIRS,
    flag: str = "improved",
    ci: float = 0.95,
    bootstrap: int = 10_000,
    seed: int = 0,
) -> FractionImproved:
    """The fraction of (model, pair) rows of ``method`` (one ``pair``, or ``"all"``) whose ``flag`` is set."""
    if flag not in ("improved", "improved_nll", "beats_source"):
        raise ValueError(f"flag must be 'improved', 'improved_nll' or 'beats_source', got {flag!r}")
    flags: dict[str, list[bool]] = {}
    for r in rows:
        if r.method == method and (pair == ALL_PAIRS or r.pair == pair):
            if flag == "beats_source" and math.isnan(r.ece_src):
                continue
            flags.setdefault(r.model, []).append(bool(getattr(r, flag)))
    fraction, low, high = bootstrap_fraction(flags, ci, bootstrap, seed)
    return FractionImproved(
        pair=pair,
        method=method,
        flag=flag,
        models=len(flags),
        improved=sum(sum(f) for f in flags.values()),
        total=sum(len(f) for f in flags.values()),
        fraction=fraction,
        ci_low=low,
        ci_high=high,
        ci=ci,
        bootstrap=int(bootstrap),
        seed=int(seed),
    )


def summarise_rows(
    rows: Sequence[Any],
    flags: Sequence[str] = ("improved", "improved_nll", "beats_source"),
    ci: float = 0.95,
    bootstrap: int = 10_000,
    seed: int = 0,
) -> list[FractionImproved]:
    """Fractions improved per (pair, method, flag), then pooled over pairs (``pair="all"``)."""
    pairs = list(dict.fromkeys(r.pair for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    out = []
    for method in methods:
        for p in [*pairs, ALL_PAIRS] if len(pairs) > 1 else pairs:
            for flag in flags:
                s = fraction_improved(rows, method, p, flag, ci, bootstrap, seed)
                if s.total:
                    out.append(s)
    return out


__all__ = [
    "ALL_PAIRS",
    "SUMMARY_COLUMNS",
    "FractionImproved",
    "bootstrap_fraction",
    "fraction_improved",
    "summarise_rows",
]
