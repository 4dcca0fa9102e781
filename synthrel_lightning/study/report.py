"""The study report: ``report.md``, a self-contained ``report.html`` (figures as base64 PNG) and ``report.json``.

Every number in the report is read from the stage outputs — ``evaluate/results.json``,
``correlate/correlations.json``, ``calibration/calibration_study.json``,
``finetune/finetune_table.json``, ``qc/filters.json`` and ``qc/summaries.json`` — and copied
into ``report.json`` unchanged; the Markdown and HTML print those values with :func:`fmt`.
The paper's published numbers (Loiseau et al., ECCV 2024) stand beside ours where it gives them:
Pearson correlations of about 0.7 to 0.93 across ~40 segmenters; a temperature fitted on
synthetic domain data lowers the real-domain ECE for more than 90% of the models (fog, rain,
snow, night); fine-tuning RbA (Swin-L) with synthetic outliers matches COCO pastes on SMIYC
RoadAnomaly21.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json, atomic_write_text
from synthrel_lightning.correlation.pairs import slug
from synthrel_lightning.study.context import QC_SUFFIX, StudyContext

__all__ = ["PAPER", "build_report_data", "fmt", "render_html", "render_markdown", "report_stage"]

PAPER: dict[str, str] = {
    "correlation": "Pearson r ~0.7-0.93 per domain across ~40 Cityscapes segmenters",
    "calibration": "> 90% of models improved (fog, rain, snow, night)",
    "finetune": "RbA Swin-L on SMIYC RoadAnomaly21, AUROC / AP / FPR95: synthetic 98.1 / 88.6 / 8.3, "
    "COCO 98.2 / 88.7 / 8.2, none 96.4 / 79.6 / 15.0",
}
"""The paper's published findings (Loiseau et al., ECCV 2024, arXiv 2312.09231)."""


def fmt(value: Any, digits: int = 3) -> str:
    """How the report prints a number (``–`` for missing or not finite)."""
    if value is None or isinstance(value, bool):
        return "–" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def build_report_data(ctx: StudyContext) -> dict[str, Any]:
    """Gather the stage outputs the report shows (values unchanged) and draw its figures."""
    from synthrel_lightning.study.records import STAGES, read_record
    from synthrel_lightning.study.report_figures import calibration_figure, pair_scatter_figure

    out = ctx.output_dir
    figures_dir = ctx.stage_dir("report") / "figures"
    results = _read(out / "evaluate" / "results.json") or {"models": {}}
    models = results.get("models", {})
    ok = {n: r["metrics"] for n, r in models.items() if r.get("status") == "ok"}
    data: dict[str, Any] = {
        "paper": PAPER,
        "stages": {s: (read_record(ctx, s) or {}) for s in STAGES if s != "report"},
        "failed_models": {n: r.get("error", "") for n, r in models.items() if r.get("status") != "ok"},
        "failed_sets": _read(out / "evaluate" / "set_failures.json") or {},
        "models": list(ok),
        "figures": {},
    }
    data["stages"] = {s: {k: r.get(k) for k in ("status", "seconds", "error")} for s, r in data["stages"].items() if r}
    # Finding 1: correlations, unfiltered beside QC-filtered.
    corr = (_read(out / "correlate" / "correlations.json") or {}).get("correlations", [])
    keep = ("synthetic", "real", "metric", "method", "n", "status", "coefficient", "ci_low", "ci_high", "p_value")
    data["correlations"] = [{k: r.get(k) for k in keep} for r in corr]
    for p in ctx.pairs:
        for metric in p.metrics:
            rows = {
                view: next(
                    (r for r in corr if r["synthetic"] == view and r["real"] == p.real and r["metric"] == metric
                     and r["method"] == "pearson"),
                    None,
                )
                for view in (p.synthetic, f"{p.synthetic}{QC_SUFFIX}")
            }  # fmt: skip
            panels = [(v, p.real, metric, rows[v], "QC-filtered" if v.endswith(QC_SUFFIX) else "unfiltered")
                      for v in rows if rows[v] is not None]  # fmt: skip
            if panels and ok:
                key = f"scatter {p.synthetic}~{p.real}/{metric}"
                path = figures_dir / f"scatter_{slug(p.synthetic + '~' + p.real + '_' + metric)}.png"
                data["figures"][key] = str(pair_scatter_figure(ok, panels, path))
    # Finding 2: calibration.
    cal = _read(out / "calibration" / "calibration_study.json")
    data["calibration"] = cal
    if cal and cal.get("rows"):
        for pair, method in dict.fromkeys((r["pair"], r["method"]) for r in cal["rows"]):
            path = figures_dir / f"calibration_{slug(pair)}_{method}.png"
            data["figures"][f"calibration {pair} ({method})"] = str(calibration_figure(cal["rows"], pair, method, path))
    # Finding 3: fine-tuning.
    data["finetune"] = _read(out / "finetune" / "finetune_table.json")
    # QC.
    filters = _read(out / "qc" / "filters.json") or {}
    summaries = _read(out / "qc" / "summaries.json") or {}
    data["qc"] = {
        name: {
            "frames": f.get("frames"),
            "kept": len(f.get("kept", [])),
            "kept_fraction": f.get("kept_fraction"),
            "thresholds": (f.get("report") or {}).get("thresholds"),
            "per_class": (f.get("report") or {}).get("per_class", {}),
            "references": {
                ref: {"miou_mean": s.get("miou", {}).get("mean"), "pixel_acc_mean": s.get("pixel_acc", {}).get("mean")}
                for ref, s in (summaries.get(name, {}).get("references") or {}).items()
            },
            "objects": summaries.get(name, {}).get("objects"),
            "contact_sheet": summaries.get(name, {}).get("contact_sheet"),
        }
        for name, f in filters.items()
    }
    return data


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _interval(row: dict[str, Any] | None) -> str:
    if not row or row.get("coefficient") is None:
        return "–" if not row else f"– ({row.get('status')})"
    return f"{fmt(row['coefficient'])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"


def render_markdown(data: dict[str, Any], figure_ref: Any = None) -> str:
    """The report as Markdown; ``figure_ref(key, path)`` gives each figure's image reference."""
    ref = figure_ref or (lambda key, path: Path(path).name)
    lines = ["# Study report", "", "Loiseau et al., *Reliability in Semantic Segmentation: Can We Use Synthetic Data?* "
             "(ECCV 2024): the three uses of synthetic data, on this study's zoo.", ""]  # fmt: skip
    lines += ["## Stages", ""]
    lines += _table(
        ["stage", "status", "seconds", "error"],
        [[s, str(r.get("status")), fmt(r.get("seconds"), 1), r.get("error") or ""] for s, r in data["stages"].items()],
    )
    lines += ["", f"Models evaluated: {len(data['models'])}", ""]
    if data["failed_models"] or data["failed_sets"]:
        lines += ["### Failures", ""]
        lines += [f"- model {n}: {e}" for n, e in data["failed_models"].items()]
        lines += [f"- model {m}, set {s}: {e}" for m, sets in data["failed_sets"].items() for s, e in sets.items()]
        lines.append("")
    lines += ["## Finding 1: synthetic scores predict real scores", "", f"Paper: {data['paper']['correlation']}.", ""]
    rows = data["correlations"]
    views: dict[tuple[str, str, str, str], dict[bool, Any]] = {}
    for r in rows:
        base = r["synthetic"].removesuffix(QC_SUFFIX)
        views.setdefault((base, r["real"], r["metric"], r["method"]), {})[r["synthetic"].endswith(QC_SUFFIX)] = r
    lines += _table(
        ["synthetic", "real", "metric", "method", "n", "unfiltered [CI]", "QC-filtered [CI]"],
        [
            [b, real, m, meth, str((v.get(False) or v[True])["n"]), _interval(v.get(False)), _interval(v.get(True))]
            for (b, real, m, meth), v in views.items()
        ],  # fmt: skip
    )
    lines.append("")
    for key, path in data["figures"].items():
        if key.startswith("scatter"):
            lines += [f"![{key}]({ref(key, path)})", ""]
    lines += ["## Finding 2: calibration with synthetic domains", "", f"Paper: {data['paper']['calibration']}.", ""]
    cal = data.get("calibration")
    if cal:
        lines += _table(
            ["pair", "method", "flag", "improved / total", "fraction [CI]"],
            [
                [
                    s["pair"],
                    s["method"],
                    s["flag"],
                    f"{s['improved']} / {s['total']}",
                    f"{fmt(s['fraction'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]",
                ]
                for s in cal.get("summary", [])
            ],  # fmt: skip
        )
        lines.append("")
        lines += _table(
            ["model", "pair", "method", "T syn", "T src", "T oracle", "ECE T=1", "ECE syn", "ECE src", "ECE oracle"],
            [
                [
                    r["model"],
                    r["pair"],
                    r["method"],
                    *(fmt(r[k], 2) for k in ("t_syn", "t_src", "t_oracle")),
                    *(fmt(r[k], 4) for k in ("ece_before", "ece_syn", "ece_src", "ece_oracle")),
                ]
                for r in cal.get("rows", [])
            ],  # fmt: skip
        )
        lines += [f"- calibration: model {n} failed: {e}" for n, e in (cal.get("failed") or {}).items()]
        lines.append("")
        for key, path in data["figures"].items():
            if key.startswith("calibration"):
                lines += [f"![{key}]({ref(key, path)})", ""]
    else:
        lines += ["No calibration results (stage not configured or failed).", ""]
    lines += ["## Finding 3: fine-tuning with synthetic outliers", "", f"Paper: {data['paper']['finetune']}.", ""]
    ft = data.get("finetune")
    if ft:
        for s in ft["sets"]:
            lines += [f"**{s}**", ""]
            table_rows = []
            for v, per_set in ft["values"].items():
                cells = [fmt(per_set.get(s, {}).get(m)) for m in ft["metrics"]]
                paper = (ft.get("reference") or {}).get(v, {}).get(s, {})
                cells = [c + (f" (paper {fmt(paper[m])})" if m in paper else "") for c, m in zip(cells, ft["metrics"])]
                table_rows.append([v, *cells])
            lines += _table(["outliers", *ft["metrics"]], table_rows)
            lines.append("")
    else:
        lines += ["No fine-tuning table (stage not configured or failed).", ""]
    lines += ["## Synthetic-set quality (QC)", ""]
    if data["qc"]:
        lines += _table(
            ["set", "frames", "kept", "kept fraction", "reference mIoU (mean)", "object IoU (mean)"],
            [
                [
                    n,
                    str(q["frames"]),
                    str(q["kept"]),
                    fmt(q["kept_fraction"]),
                    ", ".join(f"{r}: {fmt(v['miou_mean'])}" for r, v in q["references"].items()) or "–",
                    fmt(((q.get("objects") or {}).get("iou") or {}).get("mean")),
                ]
                for n, q in data["qc"].items()
            ],  # fmt: skip
        )
        lines.append("")
        for n, q in data["qc"].items():
            if q.get("contact_sheet"):
                lines += [f"Best and worst frames of {n} (generated image, label overlay, reference prediction):", ""]
                lines += [f"![contact sheet {n}]({ref('contact ' + n, q['contact_sheet'])})", ""]
    else:
        lines += ["No QC results (stage not configured or failed).", ""]
    return "\n".join(lines) + "\n"


def _markdown_to_html(md: str, images: dict[str, str]) -> str:
    """A small converter for the report's own Markdown (headings, tables, lists, images, bold)."""
    out: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            head, *body = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in table if "---|" not in r]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        m = re.match(r"^!\[(.*)\]\((.*)\)$", line)
        if m:
            src = images.get(m.group(2), m.group(2))
            out.append(f'<p><img alt="{html.escape(m.group(1))}" src="{src}" style="max-width:100%"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
            text = re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
            out.append(f"<p>{text}</p>")
    flush()
    return "\n".join(out)


def render_html(data: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (every figure embedded as a base64 PNG)."""
    images = {}
    for path in [
        *data["figures"].values(),
        *(q["contact_sheet"] for q in data["qc"].values() if q.get("contact_sheet")),
    ]:
        p = Path(path)
        if p.is_file():
            images[p.name] = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
    body = _markdown_to_html(render_markdown(data), images)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f3f3f3}"
    )
    return f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Study report</title><style>{style}</style>' \
        f"</head><body>\n{body}\n</body></html>\n"  # fmt: skip


def report_stage(ctx: StudyContext) -> dict[str, Any]:
    """Write ``<output>/report/report.{md,html,json}`` from the stage outputs."""
    import shutil

    out = ctx.stage_dir("report")
    data = build_report_data(ctx)
    for q in data["qc"].values():  # contact sheets beside the Markdown, which links them by name
        if q.get("contact_sheet") and Path(q["contact_sheet"]).is_file():
            target = out / "figures" / Path(q["contact_sheet"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(q["contact_sheet"], target)
    md = render_markdown(data, lambda key, path: f"figures/{Path(path).name}")
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", render_html(data))
    atomic_write_json(out / "report.json", data)
    return {
        "files": [str(out / f) for f in ("report.md", "report.html", "report.json")],
        "figures": len(data["figures"]),
    }
