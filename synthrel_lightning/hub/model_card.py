"""The model card of a shared OOD segmenter: what it is, how it was trained, how reliable it measured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

CHECKPOINT_KEYS = ("checkpoint", "pretrained_model_name_or_path", "model_id")


def _segmenter(spec: Mapping[str, Any]) -> tuple[str, str | None]:
    """The segmenter's class path and the checkpoint it starts from (a hub id or folder), if named."""
    seg = (spec.get("init_args") or {}).get("segmenter")
    if not isinstance(seg, Mapping):
        return str(seg), None
    args = seg.get("init_args") or {}
    base = next((str(args[k]) for k in CHECKPOINT_KEYS if args.get(k)), None)
    if base is None and args.get("encoder_name"):
        base = f"{args.get('arch', '')} {args['encoder_name']}".strip()
    return str(seg.get("class_path", "?")), base


def _metrics_table(metrics: Mapping[str, float]) -> str:
    if not metrics:
        return "No evaluation was attached when this model was saved.\n"
    rows = ["| set | metric | value |", "|---|---|---|"]
    for key in sorted(metrics):
        parts = key.split("/")
        stage_set = "/".join(parts[:-1]) or "-"
        rows.append(f"| {stage_set} | {parts[-1]} | {metrics[key]:.4f} |")
    return "\n".join(rows) + "\n"


def render_model_card(
    name: str,
    spec: Mapping[str, Any],
    recipe: Any,
    metrics: Mapping[str, float],
    temperature: float,
    ood_score: str,
) -> str:
    """A Hugging Face model card (YAML metadata + Markdown) for a saved OOD segmenter."""
    seg_class, base = _segmenter(spec)
    meta: dict[str, Any] = {
        "library_name": "synthrel-lightning",
        "pipeline_tag": "image-segmentation",
        "tags": ["semantic-segmentation", "out-of-distribution-detection", "calibration", "synthrel-lightning"],
    }
    if base and "/" in base and not base.startswith((".", "/")):
        meta["base_model"] = base
    init_args = spec.get("init_args") or {}
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        "A semantic segmenter with an out-of-distribution (OOD) score and a calibration temperature, "
        "trained and evaluated with synthrel-lightning.",
        "",
        "## Model",
        "",
        f"- module: `{spec.get('class_path')}`",
        f"- segmenter: `{seg_class}`" + (f" from `{base}`" if base else ""),
        f"- classes: {init_args.get('num_classes', 19)}",
        f"- OOD score: `{ood_score or init_args.get('ood_score', '?')}` (higher = more OOD)",
        f"- temperature: {temperature:.4f}",
        "",
        "## Use",
        "",
        "```python",
        "from synthrel_lightning.models import OODSegmenter",
        "",
        f'model = OODSegmenter.from_pretrained("{name}")',
        "class_scores = model(images)  # temperature-scaled (B, K, H, W)",
        "ood = model.score(class_scores)  # (B, H, W)",
        "```",
        "",
        "## Reliability of the last evaluation",
        "",
        _metrics_table(metrics),
        "## Training recipe",
        "",
    ]
    if recipe is None:
        lines.append("Not recorded.")
    else:
        lines += ["```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```"]
    return "\n".join(lines) + "\n"


__all__ = ["render_model_card"]
