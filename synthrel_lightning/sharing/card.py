"""The dataset card (README.md) of a shared set: the YAML header ``datasets`` and the Hub read, then provenance."""

from __future__ import annotations

import json
from typing import Any

from synthrel_lightning.sharing.format import DATA_DIR, MANIFEST

__all__ = ["render_card", "size_category"]


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket of a row count."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "1M<n<10M"


def _header(manifest: dict[str, Any], features: Any, license: str | None) -> dict[str, Any]:
    splits = manifest["splits"]
    total = sum(s["num_rows"] for s in splits.values())
    header: dict[str, Any] = {}
    if license:
        header["license"] = license
    header.update(
        {
            "pretty_name": manifest.get("pretty_name") or "Shared set",
            "task_categories": ["image-segmentation"],
            "size_categories": [size_category(total)],
            "tags": ["synthrel-lightning", "out-of-distribution-detection", "semantic-segmentation"]
            + (["outlier-bank"] if manifest["kind"] == "bank" else []),
            "configs": [
                {
                    "config_name": "default",
                    "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*.parquet"} for s in splits],
                }
            ],
            "dataset_info": {
                "features": features._to_yaml_list(),
                "splits": [
                    {"name": s, "num_examples": v["num_rows"], "num_bytes": v["num_bytes"]} for s, v in splits.items()
                ],
            },
        }
    )
    return header


def _columns_text(kind: str, qc_columns: list[str]) -> str:
    if kind == "bank":
        lines = [
            "- `key`: the entry's key in the outlier bank; `rgb` (RGB crop or frame), `alpha` (soft object mask,",
            "  0..255) and `label` (frame entries: semantic train ids) as lossless PNG images;",
            "- `label_value` (254 = OOD object, else the train id of an in-distribution control), `name`, `prompt`,",
            "  `source`, `seed`, `model`, `created` (Unix time), `kind` (`object` or `frame`), `metadata` (JSON).",
        ]
    else:
        lines = [
            "- `name`: the frame id (unique in the set); `image`: RGB; `label`: Cityscapes train ids (0..18,",
            "  254 = OOD object, 255 = void); `ood`: 0 in-distribution, 1 OOD, 255 void. All lossless PNG images;",
            "- `metadata`: JSON text (frame size, the frame's files relative to the source set, extra fields).",
        ]
        if qc_columns:
            lines.append(f"- `qc_*` ({len(qc_columns)} columns): the frame's row of the set's QC table (`qc/`).")
    return "\n".join(lines)


def render_card(manifest: dict[str, Any], features: Any, license: str | None = None) -> str:
    """The README.md text of a shared set described by ``manifest`` (see :mod:`.export`)."""
    import yaml

    kind = manifest["kind"]
    prov = manifest["provenance"]
    counts = manifest["counts"]
    title = manifest.get("pretty_name") or "Shared set"
    qc = manifest.get("qc")
    splits = ", ".join(f"`{s}` ({v['num_rows']} rows, {len(v['files'])} shards)" for s, v in manifest["splits"].items())
    what = "an outlier bank" if kind == "bank" else "a segmentation evaluation set"
    body = [
        f"# {title}",
        "",
        f"{what[0].upper()}{what[1:]} exported by synthrel-lightning (format `{manifest['format']}` "
        f"version {manifest['version']}). Splits: {splits}.",
        "",
        "## Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("<this folder or hub id>")',
        "",
        "from synthrel_lightning.sharing import " + ("HubBankSource" if kind == "bank" else "HubFramesDataset"),
        (
            'source = HubBankSource("<this folder or hub id>")  # an outlier source for OutlierMixer'
            if kind == "bank"
            else f'frames = HubFramesDataset("<this folder or hub id>", split="{next(iter(manifest["splits"]))}")'
        ),
        "```",
        "",
        "## Columns",
        "",
        _columns_text(kind, (qc or {}).get("columns", [])),
        "",
        "## Provenance",
        "",
        *(f"- {k}: `{json.dumps(v, default=str)}`" for k, v in prov.items()),
        "",
        "## Counts",
        "",
        *(f"- {k}: {json.dumps(v, default=str)}" for k, v in counts.items()),
    ]
    if qc:
        body += [
            "",
            "## Quality control",
            "",
            f"The set's QC table is copied as is under `qc/` ({', '.join(f'`{f}`' for f in qc['files'])}); "
            f"its rows are joined to the frames by `{qc['key']}` as the `qc_*` columns "
            f"({qc['matched']} of {qc['rows']} table rows match an exported frame).",
        ]
    body += ["", f"The machine-readable description of this set is `{MANIFEST}`.", ""]
    header = yaml.safe_dump(_header(manifest, features, license), sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n".join(body)
