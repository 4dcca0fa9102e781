"""The fine-tuning study: one segmenter fine-tuned with no outliers, COCO pastes or inpainted outliers, one table.

Loiseau et al. (ECCV 2024) fine-tune RbA (Nayal et al., ICCV 2023) with objects inpainted by
Stable Diffusion in place of COCO pastes and find both sources on par. The three runs are
``fit`` runs of ``recipes/finetune_study_{none,coco,synthetic}.yaml``, which differ only in
``data.init_args.outliers`` (and their output folder): :func:`recipe_differences` lists the
differing keys of two parsed configs, and the tests hold the recipes to that.

:func:`finetune_table` gathers the metrics each run logged on the real OOD sets (pixel
``auroc``, ``ap``, ``fpr95``; component ``siou``, ``ppv``, ``mean_f1``) into a
:class:`FinetuneTable` (one row per outlier source) written as CSV, JSON and Markdown
(:meth:`FinetuneTable.write`). A run's metrics are given as ``{set: {metric: value}}``, as a
flat ``{"val/<set>/<metric>": value}`` mapping (``trainer.callback_metrics``; ``test/...``
keys are read too), or as a ``results.json``-style record with a ``"metrics"`` field.

API (stable): :data:`FINETUNE_VARIANTS`, :data:`FINETUNE_RECIPES`, :data:`PAPER_FINETUNE`,
:func:`load_recipe`, :func:`recipe_differences`, :func:`finetune_table`, :class:`FinetuneTable`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.study.table_files import write_table_files

FINETUNE_VARIANTS: tuple[str, ...] = ("none", "coco", "synthetic")
"""The outlier sources compared: none, COCO pastes, banked inpainted objects."""

FINETUNE_RECIPES: dict[str, str] = {v: f"recipes/finetune_study_{v}.yaml" for v in FINETUNE_VARIANTS}
"""Recipe of each variant, relative to the repository root."""

FINETUNE_SETS: tuple[str, ...] = ("road_anomaly", "smiyc_anomaly", "smiyc_obstacle", "fishyscapes_lf")
"""The real OOD sets the recipes validate on."""

FINETUNE_METRICS: tuple[str, ...] = ("auroc", "ap", "fpr95", "siou", "ppv", "mean_f1")
"""Pixel (AUROC, AP, FPR95) and component (sIoU, PPV, mean F1) metrics of the table."""

LOWER_IS_BETTER: frozenset[str] = frozenset({"fpr95"})
"""Metrics where a lower value is better."""

PAPER_FINETUNE: dict[str, dict[str, dict[str, float]]] = {
    "none": {"smiyc_anomaly": {"auroc": 0.964, "ap": 0.796, "fpr95": 0.150}},
    "coco": {"smiyc_anomaly": {"auroc": 0.982, "ap": 0.887, "fpr95": 0.082}},
    "synthetic": {"smiyc_anomaly": {"auroc": 0.981, "ap": 0.886, "fpr95": 0.083}},
}
"""Loiseau et al.'s published numbers (RbA, Swin-L, SMIYC RoadAnomaly21, fractions of 1)."""

Metrics = dict[str, dict[str, float]]


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe's YAML as a dict (a clear error for a missing or malformed file)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe {p} does not exist")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"recipe {p} holds {type(data).__name__}, expected a mapping")
    return data


def recipe_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two parsed configs differ (lists compared item by item, ``[i]``)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for k in list(dict.fromkeys([*a, *b])):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out += recipe_differences(a[k], b[k], path)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in recipe_differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [prefix]


def _as_metrics(name: str, value: Any) -> Metrics:
    if isinstance(value, Mapping) and "metrics" in value and isinstance(value["metrics"], Mapping):
        value = value["metrics"]
    if not isinstance(value, Mapping):
        raise TypeError(f"finetune_table: metrics of {name!r} are {type(value).__name__}; expected a mapping")
    if all(isinstance(v, Mapping) for v in value.values()):
        return {str(s): {str(m): float(x) for m, x in d.items()} for s, d in value.items()}
    from synthrel_lightning.correlation.evaluate import metrics_from_callback_metrics

    out: Metrics = {}
    for stage in ("val", "test"):
        for s, d in metrics_from_callback_metrics(value, stage).items():
            out.setdefault(s, {}).update(d)
    if not out:
        raise ValueError(
            f"finetune_table: metrics of {name!r} hold neither {{set: {{metric: value}}}} nor 'val/<set>/<metric>' "
            f"keys (got {sorted(value)[:5]})"
        )
    return out


def _fmt(v: float, percent: bool) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{100 * v:.1f}" if percent else f"{v:.4f}"


@dataclass
class FinetuneTable:
    """Metric values by outlier source, then set, then metric (fractions of 1), with the paper's beside them."""

    values: dict[str, Metrics]
    sets: list[str]
    metrics: list[str]
    reference: dict[str, Metrics] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        """The rows: outlier sources in order."""
        return list(self.values)

    def value(self, variant: str, set_name: str, metric: str) -> float:
        """One cell (NaN when the run did not log it)."""
        return float(self.values.get(variant, {}).get(set_name, {}).get(metric, math.nan))

    def columns(self) -> list[str]:
        """Wide columns: ``variant`` then ``<set>/<metric>``."""
        return ["variant", *(f"{s}/{m}" for s in self.sets for m in self.metrics)]

    def wide_rows(self) -> list[dict[str, Any]]:
        """One row per variant, one column per (set, metric)."""
        return [
            {"variant": v, **{f"{s}/{m}": self.value(v, s, m) for s in self.sets for m in self.metrics}}
            for v in self.variants
        ]

    def long_rows(self) -> list[dict[str, Any]]:
        """One row per (variant, set, metric) with the paper's value where it gives one."""
        return [
            {
                "variant": v,
                "set": s,
                "metric": m,
                "value": self.value(v, s, m),
                "paper": self.reference.get(v, {}).get(s, {}).get(m, math.nan),
            }
            for v in self.variants
            for s in self.sets
            for m in self.metrics
        ]

    def best(self, set_name: str, metric: str) -> str | None:
        """The variant with the best finite value of a cell column (None if none)."""
        vals = [(self.value(v, set_name, metric), v) for v in self.variants]
        vals = [(x, v) for x, v in vals if math.isfinite(x)]
        if not vals:
            return None
        return (min if metric in LOWER_IS_BETTER else max)(vals)[1]

    def markdown(self, percent: bool = True) -> str:
        """One Markdown table per set (values in percent by default; the best in bold, the paper's beside)."""
        lines: list[str] = []
        for s in self.sets:
            lines += [
                f"**{s}**",
                "",
                "| outliers | " + " | ".join(self.metrics) + " |",
                "|---" * (1 + len(self.metrics)) + "|",
            ]
            for v in self.variants:
                cells = []
                for m in self.metrics:
                    text = _fmt(self.value(v, s, m), percent)
                    if self.best(s, m) == v and len(self.variants) > 1:
                        text = f"**{text}**"
                    ref = self.reference.get(v, {}).get(s, {}).get(m)
                    if ref is not None:
                        text += f" (paper {_fmt(ref, percent)})"
                    cells.append(text)
                lines.append(f"| {v} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able content (NaN as null)."""

        def clean(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "sets": self.sets,
            "metrics": self.metrics,
            "values": {
                v: {s: {m: clean(self.value(v, s, m)) for m in self.metrics} for s in self.sets} for v in self.variants
            },
            "reference": self.reference,
        }

    def write(self, output_dir: str | Path, name: str = "finetune_table") -> dict[str, list[str]]:
        """Write ``<name>.csv`` (wide), ``<name>_long.csv``, ``<name>.json`` and ``<name>.md``, atomically."""
        self.files = write_table_files(
            output_dir,
            {
                name: (self.wide_rows(), self.columns()),
                f"{name}_long": (self.long_rows(), ["variant", "set", "metric", "value", "paper"]),
            },
            json_name=f"{name}.json",
            payload=self.to_dict(),
            markdown_name=f"{name}.md",
            markdown=self.markdown(),
        )
        return self.files


def finetune_table(
    results: Mapping[str, Any],
    sets: Sequence[str] | None = None,
    metrics: Sequence[str] = FINETUNE_METRICS,
    reference: Mapping[str, Metrics] | None = None,
    output_dir: str | Path | None = None,
) -> FinetuneTable:
    """The table of the fine-tuning study from each variant's logged metrics.

    Args:
        results: variant name (e.g. ``none``, ``coco``, ``synthetic``) -> its metrics (see the module doc).
        sets: the OOD sets (columns), default every set of :data:`FINETUNE_SETS` some run logged,
            else every set logged.
        metrics: metric names per set.
        reference: published values to show beside ours (default :data:`PAPER_FINETUNE`; ``{}`` for none).
        output_dir: when given, the table files are written there.
    """
    if not results:
        raise ValueError("finetune_table: no results given (expected {variant: metrics})")
    values = {str(k): _as_metrics(str(k), v) for k, v in results.items()}
    logged = list(dict.fromkeys(s for m in values.values() for s in m))
    if sets is None:
        sets = [s for s in FINETUNE_SETS if s in logged] or logged
    missing = [s for s in sets if s not in logged]
    if missing:
        raise ValueError(f"finetune_table: no run logged sets {missing}; logged: {logged}")
    ref = {k: dict(v) for k, v in (PAPER_FINETUNE if reference is None else reference).items()}
    table = FinetuneTable(values, list(sets), list(metrics), ref)
    if output_dir is not None:
        table.write(output_dir)
    return table


__all__ = [
    "FINETUNE_METRICS",
    "FINETUNE_RECIPES",
    "FINETUNE_SETS",
    "FINETUNE_VARIANTS",
    "LOWER_IS_BETTER",
    "PAPER_FINETUNE",
    "FinetuneTable",
    "finetune_table",
    "load_recipe",
    "recipe_differences",
]
