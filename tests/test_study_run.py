"""The tiny study end to end: every configured stage, a failing zoo entry listed, the report's numbers equal the
stage outputs, and a rerun recomputes nothing already cached."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from synthrel_lightning.study.report import fmt
from synthrel_lightning.study.run import run_paper_study
from synthrel_lightning.study.tiny import tiny_study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object, object]:
    root = tmp_path_factory.mktemp("tiny_study")
    kwargs = tiny_study(root, models=3, qc=True)
    kwargs["zoo"].append(
        {"name": "broken", "checkpoint": str(root / "missing.ckpt"), "model": kwargs["zoo"][0]["model"]}
    )
    first = run_paper_study(**kwargs)
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "study" / "cache").rglob("*.json")}
    second = run_paper_study(**kwargs)
    return kwargs, first, second, mtimes


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_stage_ran_and_the_broken_model_is_listed(study) -> None:
    kwargs, first, _, _ = study
    status = {o.stage: o.status for o in first.outcomes}
    assert status["evaluate"] == "partial"  # the broken entry failed, the others were evaluated
    assert {s: status[s] for s in ("sets", "qc", "correlate", "calibration", "report")} == dict.fromkeys(
        ("sets", "qc", "correlate", "calibration", "report"), "ok"
    ) or status["calibration"] == "partial"
    out = first.output_dir
    results = _load(out / "evaluate" / "results.json")["models"]
    assert results["broken"]["status"] == "failed" and "missing.ckpt" in results["broken"]["error"]
    assert all(results[f"tiny{i}"]["status"] == "ok" for i in range(3))
    report = (out / "report" / "report.md").read_text()
    assert "model broken:" in report and "missing.ckpt" in report
    assert first.failed


def test_qc_filtered_views_are_evaluated_and_correlated(study) -> None:
    _, first, _, _ = study
    out = first.output_dir
    filters = _load(out / "qc" / "filters.json")
    assert set(filters) == {"synthetic_objects", "synthetic_fog"}
    metrics = _load(out / "evaluate" / "results.json")["models"]["tiny0"]["metrics"]
    assert "synthetic_fog@qc" in metrics and "synthetic_objects@qc" in metrics
    rows = _load(out / "correlate" / "correlations.json")["correlations"]
    assert {r["synthetic"] for r in rows} == {
        "synthetic_objects",
        "synthetic_objects@qc",
        "synthetic_fog",
        "synthetic_fog@qc",
    }


def test_report_numbers_equal_the_stage_outputs(study) -> None:
    _, first, _, _ = study
    out = first.output_dir
    data = _load(out / "report" / "report.json")
    md = (out / "report" / "report.md").read_text()
    corr = _load(out / "correlate" / "correlations.json")["correlations"]
    assert len(data["correlations"]) == len(corr)
    for shown, stored in zip(data["correlations"], corr):
        for k in ("coefficient", "ci_low", "ci_high", "p_value", "n"):
            assert shown[k] == stored[k]
        if stored["coefficient"] is not None:
            assert f"{fmt(stored['coefficient'])} [{fmt(stored['ci_low'])}, {fmt(stored['ci_high'])}]" in md
    cal = _load(out / "calibration" / "calibration_study.json")
    assert data["calibration"] == cal
    for r in cal["rows"]:
        assert f"| {r['model']} | {r['pair']} | {r['method']} | {fmt(r['t_syn'], 2)} |" in md
    for s in cal["summary"]:
        assert f"{s['improved']} / {s['total']} | {fmt(s['fraction'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" in md
    filters = _load(out / "qc" / "filters.json")
    for name, f in filters.items():
        assert data["qc"][name]["kept_fraction"] == f["kept_fraction"]
        assert f"| {name} | {f['frames']} | {len(f['kept'])} | {fmt(f['kept_fraction'])} |" in md
    html = (out / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= len(data["figures"]) >= 2
    assert 'src="figures/' not in html and 'src="http' not in html  # self-contained
    assert not any(isinstance(v, float) and math.isnan(v) for v in data["qc"]["synthetic_fog"].values())


def test_rerun_recomputes_nothing(study) -> None:
    _, first, second, mtimes = study
    by_stage = {o.stage: o for o in second.outcomes}
    # Only the broken entry is tried again: once on all sets, then on two sets alone (same error: the model's fault).
    assert by_stage["evaluate"].summary["lightning_runs"] == 3
    assert by_stage["correlate"].status == "cached" and by_stage["report"].status == "cached"
    assert by_stage["sets"].summary["built"] == [] and len(by_stage["sets"].summary["cached"]) == 6
    after = {p: p.stat().st_mtime_ns for p in (first.output_dir / "cache").rglob("*.json")}
    assert {p: t for p, t in after.items() if p in mtimes} == mtimes  # no cached record rewritten
    calib = sorted((first.output_dir / "calibration" / "stats").glob("*.npz"))
    assert len(calib) == 3
