"""The calibration study: does a temperature fitted on a synthetic domain calibrate the real one?

Loiseau et al., "Reliability in Semantic Segmentation: Can We Use Synthetic Data?" (ECCV 2024;
https://github.com/valeoai/GenVal) fit one global temperature T per segmenter on a synthetic
domain set (fog, night, rain, snow rendered from Cityscapes labels) and report that it lowers
the ECE on the matching real set (ACDC) for more than 90% of their ~40 models. For each model
and each :class:`DomainPair` this module computes, on the real set:

- ``T_syn``: fitted on the synthetic set; ``T_src``: fitted on the source set (Cityscapes val);
  ``T_oracle``: fitted on the real set itself (the best any single T can do);
- the top-1 ECE (15 equal-width bins) and the mean NLL at ``T = 1`` (before) and at each T;
- flags: ``improved`` (ECE at ``T_syn`` below ECE at ``T = 1``), ``improved_nll`` (the same for
  the NLL) and ``beats_source`` (ECE at ``T_syn`` below ECE at ``T_src``);

for two fitting rules: ``"ece_grid"`` (the authors' grid ``[0.5, 10)`` step 0.01 minimising
the ECE, on 20,000 random labelled pixels per frame as their relis code) and ``"nll"`` (the
NLL minimised over the same grid: the LBFGS fit of
:func:`~synthrel_lightning.calibration.fit_temperature` to within one grid step). Then the
fraction of models improved, per pair and pooled over pairs, with a seeded percentile
bootstrap interval over models (models are resampled, each keeping all of its pairs).

API (stable):

- :func:`calibration_rows_from_stats` (cached per-set statistics, see
  :mod:`~synthrel_lightning.study.calibration_stats`) and :func:`calibration_rows_from_logits`
  (``{model: {set: (logits, target) or batches}}``) -> ``list[CalibrationRow]``;
- :func:`summarise_rows` / :func:`fraction_improved` -> ``list[FractionImproved]``;
- :func:`run_calibration_study` (zoo entries + a datamodule with named validation sets, one
  Lightning ``validate`` run per model, statistics cached per model) -> :class:`CalibrationStudyResult`,
  whose :meth:`~CalibrationStudyResult.write` writes ``calibration_rows.csv``,
  ``calibration_summary.csv``, ``calibration_study.json`` and ``calibration_study.md`` atomically.

For mask-classification models (Mask2Former, OneFormer) T divides the per-pixel class scores
``l_k`` the module's own calibration metrics use as logits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from synthrel_lightning.calibration.sampling import DEFAULT_PIXELS_PER_IMAGE, PixelsPerImage
from synthrel_lightning.calibration.temperature import PAPER_GRID
from synthrel_lightning.study.calibration_stats import SetCalibrationStats, calibration_stats, study_temperatures
from synthrel_lightning.study.table_files import write_table_files

log = logging.getLogger(__name__)

CALIBRATION_METHODS: tuple[str, ...] = ("ece_grid", "nll")
"""Fitting rules of the study: the authors' ECE grid search, and the NLL minimum on the same grid."""

ALL_PAIRS = "all"
"""The ``pair`` of a summary pooled over every pair."""


@dataclass(frozen=True)
class DomainPair:
    """A synthetic domain set and the real set of the same domain (validation set names)."""

    synthetic: str
    real: str
    name: str = ""

    @property
    def key(self) -> str:
        """The pair's name in the tables (``name``, else ``synthetic~real``)."""
        return self.name or f"{self.synthetic}~{self.real}"


@dataclass
class CalibrationRow:
    """One model on one domain pair under one fitting rule: temperatures, ECE and NLL on the real set."""

    model: str
    pair: str
    synthetic: str
    real: str
    source: str
    method: str
    t_syn: float
    t_src: float
    t_oracle: float
    ece_before: float
    ece_syn: float
    ece_src: float
    ece_oracle: float
    nll_before: float
    nll_syn: float
    nll_src: float
    nll_oracle: float
    improved: bool
    improved_nll: bool
    beats_source: bool
    real_pixels: int
    real_frames: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values (NaN for a missing source)."""
        return asdict(self)


ROW_COLUMNS: tuple[str, ...] = tuple(CalibrationRow.__dataclass_fields__)
"""Columns of ``calibration_rows.csv``."""


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


def _row(
    model: str, pair: DomainPair, source: str | None, method: str, stats: Mapping[str, SetCalibrationStats]
) -> CalibrationRow:
    syn, real = stats[pair.synthetic], stats[pair.real]
    if not torch_equal(syn.temperatures, real.temperatures):
        raise ValueError(f"model {model!r}: {pair.synthetic} and {pair.real} statistics use different grids")
    ece, nll = real.ece(), real.nll()
    t_syn = syn.fit(method)
    t_oracle = real.fit(method)
    src = stats.get(source) if source else None
    t_src = src.fit(method) if src is not None else math.nan

    def at(values: Tensor, t: float) -> float:
        return math.nan if math.isnan(t) else float(values[real.index_of(t)])

    ece_before, ece_syn, ece_src = at(ece, 1.0), at(ece, t_syn), at(ece, t_src)
    nll_before, nll_syn = at(nll, 1.0), at(nll, t_syn)
    return CalibrationRow(
        model=model,
        pair=pair.key,
        synthetic=pair.synthetic,
        real=pair.real,
        source=source or "",
        method=method,
        t_syn=t_syn,
        t_src=t_src,
        t_oracle=t_oracle,
        ece_before=ece_before,
        ece_syn=ece_syn,
        ece_src=ece_src,
        ece_oracle=at(ece, t_oracle),
        nll_before=nll_before,
        nll_syn=nll_syn,
        nll_src=at(nll, t_src),
        nll_oracle=at(nll, t_oracle),
        improved=bool(ece_syn < ece_before),
        improved_nll=bool(nll_syn < nll_before),
        beats_source=bool(ece_syn < ece_src) if not math.isnan(ece_src) else False,
        real_pixels=real.pixels,
        real_frames=real.frames,
    )


def torch_equal(a: Tensor, b: Tensor) -> bool:
    """Whether two temperature grids are the same (to 1e-9)."""
    return a.shape == b.shape and bool((a - b).abs().max() < 1e-9) if a.numel() else a.shape == b.shape


def calibration_rows_from_stats(
    stats: Mapping[str, Mapping[str, SetCalibrationStats]],
    pairs: Sequence[DomainPair],
    source_set: str | None = None,
    methods: Sequence[str] = CALIBRATION_METHODS,
) -> list[CalibrationRow]:
    """Rows for every model of ``stats`` (``{model: {set: statistics}}``), pair and fitting rule.

    A model lacking a pair's synthetic or real set is skipped for that pair (logged); a
    missing ``source_set`` leaves ``t_src``/``ece_src``/``nll_src`` NaN.
    """
    for m in methods:
        if m not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {m!r}")
    if not pairs:
        raise ValueError("the calibration study needs at least one (synthetic, real) domain pair")
    rows: list[CalibrationRow] = []
    for model, sets in stats.items():
        if source_set and source_set not in sets:
            log.warning("calibration study: %s has no statistics of the source set %r", model, source_set)
        for pair in pairs:
            missing = [s for s in (pair.synthetic, pair.real) if s not in sets]
            if missing:
                log.warning("calibration study: %s: no statistics of %s; pair %s skipped", model, missing, pair.key)
                continue
            for method in methods:
                rows.append(_row(model, pair, source_set, method, sets))
    return rows


def calibration_rows_from_logits(
    logits: Mapping[str, Mapping[str, Iterable[tuple[Tensor, Tensor]] | tuple[Tensor, Tensor]]],
    pairs: Sequence[DomainPair],
    source_set: str | None = None,
    methods: Sequence[str] = CALIBRATION_METHODS,
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    seed: int = 0,
) -> list[CalibrationRow]:
    """Rows from unscaled logits: ``{model: {set: (logits, target) pair or batches}}`` (see
    :func:`~synthrel_lightning.study.calibration_stats.calibration_stats`)."""
    temps = study_temperatures(grid)
    stats = {
        model: {name: calibration_stats(data, temps, num_bins, pixels_per_image, seed) for name, data in sets.items()}
        for model, sets in logits.items()
    }
    return calibration_rows_from_stats(stats, pairs, source_set, methods)


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
    rows: Sequence[CalibrationRow],
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
    rows: Sequence[CalibrationRow],
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


@dataclass
class CalibrationStudyResult:
    """Rows, the fractions improved, and the models that failed (name -> error)."""

    rows: list[CalibrationRow]
    summary: list[FractionImproved]
    failed: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able content (NaN written as null)."""
        return _clean(
            {
                "rows": [r.to_dict() for r in self.rows],
                "summary": [s.to_dict() for s in self.summary],
                "failed": dict(self.failed),
            }
        )

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> CalibrationStudyResult:
        """The inverse of :meth:`to_dict` (null read back as NaN)."""

        def nan(d: Mapping[str, Any]) -> dict[str, Any]:
            return {k: (math.nan if v is None else v) for k, v in d.items()}

        return cls(
            [CalibrationRow(**nan(r)) for r in payload.get("rows", [])],
            [FractionImproved(**nan(s)) for s in payload.get("summary", [])],
            dict(payload.get("failed", {})),
        )

    def markdown(self) -> str:
        """The summary and the rows as Markdown tables."""
        lines = ["| pair | method | flag | models | improved / total | fraction | interval |", "|---" * 7 + "|"]
        for s in self.summary:
            lines.append(
                f"| {s.pair} | {s.method} | {s.flag} | {s.models} | {s.improved} / {s.total} | {s.fraction:.3f} | "
                f"[{s.ci_low:.3f}, {s.ci_high:.3f}] ({s.ci:.0%}) |"
            )
        lines += ["", "| model | pair | method | T syn | T src | T oracle | ECE T=1 | ECE syn | ECE src | ECE oracle |"]
        lines.append("|---" * 10 + "|")
        for r in self.rows:
            lines.append(
                f"| {r.model} | {r.pair} | {r.method} | {r.t_syn:.2f} | {r.t_src:.2f} | {r.t_oracle:.2f} | "
                f"{r.ece_before:.4f} | {r.ece_syn:.4f} | {r.ece_src:.4f} | {r.ece_oracle:.4f} |"
            )
        if self.failed:
            lines += ["", "Failed models:", *[f"- {n}: {e}" for n, e in self.failed.items()]]
        return "\n".join(lines) + "\n"

    def write(self, output_dir: str | Path) -> dict[str, list[str]]:
        """Write ``calibration_rows.csv``, ``calibration_summary.csv``, ``calibration_study.json`` and ``.md``."""
        out = Path(output_dir)
        files = write_table_files(
            out,
            {
                "calibration_rows": ([r.to_dict() for r in self.rows], ROW_COLUMNS),
                "calibration_summary": ([s.to_dict() for s in self.summary], SUMMARY_COLUMNS),
            },
            json_name="calibration_study.json",
            payload=self.to_dict(),
            markdown_name="calibration_study.md",
            markdown=self.markdown(),
        )
        self.files = files
        return files


def distinct_segmenters(entries: Sequence[Any]) -> tuple[list[Any], dict[str, str]]:
    """Zoo entries with one entry per segmenter: entries differing only in ``ood_score`` count once.

    A zoo lists a checkpoint once per OOD score; temperature scaling does not depend on the
    score, so counting each would weight a checkpoint by its number of scores. Returns the
    kept entries and ``{dropped name: kept name}``.
    """
    import json

    kept: dict[str, Any] = {}
    dropped: dict[str, str] = {}
    for e in entries:
        model = dict(e.model or {})
        init = {k: v for k, v in dict(model.get("init_args") or {}).items() if k != "ood_score"}
        key = json.dumps(
            [e.checkpoint, e.config, model.get("class_path", e.model_class), init], sort_keys=True, default=str
        )
        if key in kept:
            dropped[e.name] = kept[key].name
        else:
            kept[key] = e
    return list(kept.values()), dropped


def run_calibration_study(
    models: Sequence[Any],
    pairs: Sequence[DomainPair],
    source_set: str | None,
    datamodule: Any,
    output_dir: str | Path = "outputs/calibration_study",
    trainer: Mapping[str, Any] | None = None,
    methods: Sequence[str] = CALIBRATION_METHODS,
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    seed: int = 0,
    ci: float = 0.95,
    bootstrap: int = 10_000,
    distinct: bool = True,
    trust_checkpoint: bool = False,
) -> CalibrationStudyResult:
    """Evaluate each zoo entry once (``Trainer.validate`` on ``datamodule``), then rows and fractions improved.

    Each model's statistics of the pairs' sets and of ``source_set`` are cached in
    ``<output_dir>/stats/<model>.npz`` and reused by a rerun; a model that fails is
    recorded in ``failed`` and the study goes on. ``distinct`` keeps one entry per
    segmenter (:func:`distinct_segmenters`). The tables are written to ``output_dir``.
    """
    import lightning as L

    from synthrel_lightning.correlation.pairs import slug
    from synthrel_lightning.correlation.zoo import instantiate_model
    from synthrel_lightning.study.calibration_stats import CalibrationStatsCollector, load_stats, save_stats

    out = Path(output_dir)
    entries, dropped = distinct_segmenters(models) if distinct else (list(models), {})
    for name, same in dropped.items():
        log.info("calibration study: %s shares its segmenter with %s; counted once", name, same)
    wanted = [s for s in dict.fromkeys([*(s for p in pairs for s in (p.synthetic, p.real)), source_set]) if s]
    temps = study_temperatures(grid)
    stats: dict[str, dict[str, SetCalibrationStats]] = {}
    failed: dict[str, str] = {}
    for entry in entries:
        cache = out / "stats" / f"{slug(entry.name)}.npz"
        if cache.exists():
            stats[entry.name] = load_stats(cache)
            continue
        try:
            model = instantiate_model(entry, trust_checkpoint=trust_checkpoint)
            collector = CalibrationStatsCollector(wanted, temps, num_bins, pixels_per_image, seed)
            kwargs = {
                "accelerator": "auto",
                "devices": 1,
                "logger": False,
                "enable_checkpointing": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "default_root_dir": str(out / "models" / slug(entry.name)),
                **dict(trainer or {}),
            }
            L.Trainer(callbacks=[collector], **kwargs).validate(model, datamodule=datamodule, verbose=False)
            found = collector.results()
            missing = [s for s in wanted if s not in found]
            if missing:
                raise ValueError(f"the datamodule has no labelled validation set named {missing}")
        except Exception as e:  # one bad model must not stop the study
            failed[entry.name] = f"{type(e).__name__}: {e}"
            log.error("calibration study: %s failed: %s", entry.name, failed[entry.name])
            continue
        save_stats(cache, found)
        stats[entry.name] = found
    rows = calibration_rows_from_stats(stats, pairs, source_set, methods)
    result = CalibrationStudyResult(rows, summarise_rows(rows, ci=ci, bootstrap=bootstrap, seed=seed), failed)
    result.write(out)
    return result


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


__all__ = [
    "ALL_PAIRS",
    "CALIBRATION_METHODS",
    "ROW_COLUMNS",
    "SUMMARY_COLUMNS",
    "CalibrationRow",
    "CalibrationStudyResult",
    "DomainPair",
    "FractionImproved",
    "bootstrap_fraction",
    "calibration_rows_from_logits",
    "calibration_rows_from_stats",
    "distinct_segmenters",
    "fraction_improved",
    "run_calibration_study",
    "summarise_rows",
]
