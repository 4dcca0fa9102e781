"""The fine-tuning study: three recipes that differ only in the outlier source, and the results table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest

from synthrel_lightning.study.finetune_study import (
    FINETUNE_RECIPES,
    PAPER_FINETUNE,
    finetune_table,
    load_recipe,
    recipe_differences,
)

ROOT = Path(__file__).resolve().parents[1]


def _recipes() -> dict[str, dict]:
    return {v: load_recipe(ROOT / p) for v, p in FINETUNE_RECIPES.items()}


def test_recipes_differ_only_in_the_outlier_source() -> None:
    r = _recipes()
    for a, b in (("none", "coco"), ("none", "synthetic"), ("coco", "synthetic")):
        diff = recipe_differences(r[a], r[b])
        assert set(diff) <= {"trainer.default_root_dir"} | {
            d for d in diff if d.startswith("data.init_args.outliers")
        }, (a, b, diff)
        assert any(d.startswith("data.init_args.outliers") for d in diff)
        assert r[a]["trainer"]["default_root_dir"].endswith(a)
    assert r["none"]["data"]["init_args"]["outliers"] is None
    coco = r["coco"]["data"]["init_args"]["outliers"]["init_args"]
    synthetic = r["synthetic"]["data"]["init_args"]["outliers"]["init_args"]
    assert coco["source"]["class_path"] == "synthrel_lightning.synthesis.CocoObjectSource"
    assert synthetic["source"]["class_path"] == "synthrel_lightning.synthesis.BankSource"
    # the mixing itself (probability, objects per frame, placement, seed) is the same
    assert recipe_differences(coco, synthetic) == [
        p for p in recipe_differences(coco, synthetic) if p.startswith("source")
    ]


def test_recipe_differences_finds_every_kind_of_change() -> None:
    a = {"x": {"y": [1, {"z": 2}], "w": 3}, "only_a": 1}
    b = {"x": {"y": [1, {"z": 5}], "w": 3}, "only_b": 1}
    assert recipe_differences(a, b) == ["x.y[1].z", "only_a", "only_b"]
    assert recipe_differences({"l": [1, 2]}, {"l": [1]}) == ["l"]
    assert recipe_differences(a, a) == []


def test_recipes_parse_with_the_cli() -> None:
    """Every class path and argument of the three recipes resolves (nothing is instantiated: no hub access)."""
    from jsonargparse import ArgumentParser

    for variant, recipe in _recipes().items():
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--model", type=L.LightningModule)
        parser.add_argument("--data", type=L.LightningDataModule)
        parsed = parser.parse_object({"model": recipe["model"], "data": recipe["data"]})
        assert parsed.model.init_args.ood_score == "rba", variant


RESULTS = {
    "none": {"smiyc_anomaly": {"auroc": 0.95, "ap": 0.70, "fpr95": 0.20, "siou": 0.3}, "road_anomaly": {"ap": 0.5}},
    "coco": {"val/smiyc_anomaly/auroc": 0.98, "val/smiyc_anomaly/ap": 0.85, "val/smiyc_anomaly/fpr95": 0.09},
    "synthetic": {"status": "ok", "metrics": {"smiyc_anomaly": {"auroc": 0.97, "ap": 0.88, "fpr95": 0.08}}},
}


def test_table_from_metric_dicts(tmp_path) -> None:
    table = finetune_table(RESULTS, output_dir=tmp_path)
    assert table.variants == ["none", "coco", "synthetic"]
    assert table.sets == ["road_anomaly", "smiyc_anomaly"]  # FINETUNE_SETS order, only the logged ones
    assert table.value("coco", "smiyc_anomaly", "ap") == 0.85
    assert table.value("synthetic", "smiyc_anomaly", "fpr95") == 0.08
    assert math.isnan(table.value("coco", "road_anomaly", "ap"))
    assert table.best("smiyc_anomaly", "fpr95") == "synthetic" and table.best("smiyc_anomaly", "auroc") == "coco"
    assert table.best("road_anomaly", "mean_f1") is None
    wide = list(csv.DictReader((tmp_path / "finetune_table.csv").open()))
    assert [r["variant"] for r in wide] == ["none", "coco", "synthetic"]
    assert float(wide[2]["smiyc_anomaly/ap"]) == 0.88 and wide[1]["road_anomaly/ap"] == ""
    long = list(csv.DictReader((tmp_path / "finetune_table_long.csv").open()))
    assert len(long) == 3 * 2 * 6
    paper = {(r["variant"], r["set"], r["metric"]): r["paper"] for r in long}
    assert float(paper["synthetic", "smiyc_anomaly", "ap"]) == PAPER_FINETUNE["synthetic"]["smiyc_anomaly"]["ap"]
    md = (tmp_path / "finetune_table.md").read_text()
    assert "| coco | **98.0** (paper 98.2) | 85.0 (paper 88.7) | 9.0 (paper 8.2) |" in md
    payload = json.loads((tmp_path / "finetune_table.json").read_text())  # strict JSON
    assert payload["values"]["coco"]["road_anomaly"]["ap"] is None


def test_table_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no results"):
        finetune_table({})
    with pytest.raises(ValueError, match="neither"):
        finetune_table({"x": {"loss": 1.0}})
    with pytest.raises(TypeError, match="'x'"):
        finetune_table({"x": 3})
    with pytest.raises(ValueError, match="fishyscapes_lf"):
        finetune_table(RESULTS, sets=["fishyscapes_lf"])
    assert finetune_table(RESULTS, reference={}).reference == {}
