"""The correlate command: results store, resume, failure isolation, outputs; end to end on a tiny zoo."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from scipy import stats

from synthrel_lightning.correlate import Pair, ResultsStore, ZooEntry, correlate_results, main, run_zoo

SCORES = {"m1": (0.30, 0.21), "m2": (0.42, 0.35), "m3": (0.55, 0.41), "m4": (0.61, 0.60)}


def _evaluate(calls: list[str]):
    def fn(entry: ZooEntry):
        calls.append(entry.name)
        if entry.name == "broken":
            raise RuntimeError("checkpoint is truncated")
        s, r = SCORES[entry.name]
        return {"synthetic_fog": {"miou": s}, "acdc_fog": {"miou": r}}

    return fn


def test_run_zoo_records_failures_resumes_and_correlates(tmp_path) -> None:
    entries = [ZooEntry("m1"), ZooEntry("broken"), ZooEntry("m2"), ZooEntry("m3")]
    calls: list[str] = []
    store = run_zoo(entries, _evaluate(calls), ResultsStore(tmp_path), progress=False)
    assert calls == ["m1", "broken", "m2", "m3"]
    saved = json.loads((tmp_path / "results.json").read_text())["models"]
    assert saved["broken"]["status"] == "failed" and saved["broken"]["error"] == "RuntimeError: checkpoint is truncated"
    assert saved["m2"]["metrics"]["acdc_fog"]["miou"] == 0.35
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {(r["model"], r["set"], r["metric"]) for r in rows if r["status"] == "ok"} == {
        (m, s, "miou") for m in ("m1", "m2", "m3") for s in ("synthetic_fog", "acdc_fog")
    }
    # A rerun with one more model evaluates only the new one and (by default) the failed one.
    calls.clear()
    store = run_zoo([*entries, ZooEntry("m4")], _evaluate(calls), ResultsStore(tmp_path), progress=False)
    assert calls == ["broken", "m4"]
    calls.clear()
    run_zoo([*entries, ZooEntry("m4")], _evaluate(calls), ResultsStore(tmp_path), retry_failed=False, progress=False)
    assert calls == []
    out = correlate_results(store.ok_metrics(), [Pair("synthetic_fog", "acdc_fog", ["miou"])], tmp_path, bootstrap=100)
    pearson = next(r for r in out if r["method"] == "pearson")
    xs, ys = zip(*SCORES.values())
    assert pearson["coefficient"] == pytest.approx(stats.pearsonr(xs, ys)[0])
    assert pearson["n"] == 4 and sorted(pearson["models"]) == ["m1", "m2", "m3", "m4"]
    assert (tmp_path / "plots" / "scatter_synthetic_fog-vs-acdc_fog_miou.png").stat().st_size > 1000
    csv_rows = list(csv.DictReader((tmp_path / "correlations.csv").open()))
    assert [r["method"] for r in csv_rows] == ["pearson", "spearman", "kendall"]


def test_duplicate_names_and_bad_metrics(tmp_path) -> None:
    with pytest.raises(ValueError, match="repeated: \\['m1'\\]"):
        run_zoo([ZooEntry("m1"), ZooEntry("m1")], _evaluate([]), ResultsStore(tmp_path), progress=False)
    store = run_zoo([ZooEntry("m1")], lambda e: {}, ResultsStore(tmp_path), progress=False)
    assert "logged no val/<set>/<metric>" in store.models["m1"]["error"]
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="results.json is not valid JSON"):
        ResultsStore(tmp_path)


def test_two_models_report_not_enough_points(tmp_path) -> None:
    results = {"a": {"s": {"miou": 0.1}, "r": {"miou": 0.2}}, "b": {"s": {"miou": 0.3}, "r": {"miou": 0.5}}}
    rows = correlate_results(results, [Pair("s", "r", ["miou"])], tmp_path, bootstrap=10, plots=False)
    assert all(r["status"] == "not_enough_points" and r["coefficient"] is None for r in rows)
    assert "n=2, need ≥ 3" in rows[0]["message"]


from synthrel_lightning.data import DemoDataModule  # noqa: E402


class DemoTwoSets(DemoDataModule):
    """Demo scenes served as two named evaluation sets: the val frames ("demo") and the train frames ("demo_train")."""

    def build_sets(self) -> None:
        super().build_sets()
        self.val_sets = {**self.val_sets, "demo_train": self.train_set}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Three tiny OOD segmenters (different seeds) saved as checkpoints, plus a config for the demo datamodule."""
    import torch

    from synthrel_lightning.models import OODSegmenter, TinySegmenter

    root = tmp_path_factory.mktemp("zoo")
    seg = {
        "class_path": "synthrel_lightning.models.TinySegmenter",
        "init_args": {"num_classes": 19, "width": 8, "depth": 1},
    }
    model_def = {
        "class_path": "synthrel_lightning.models.OODSegmenter",
        "init_args": {"segmenter": seg, "ood_score": "energy"},
    }
    for seed in range(3):
        torch.manual_seed(seed)
        m = OODSegmenter(TinySegmenter(num_classes=19, width=8, depth=1))
        if seed == 2:
            # A genuine Lightning checkpoint (hyper-parameters, versions, ...).
            import lightning as L

            trainer = L.Trainer(logger=False, accelerator="cpu", enable_progress_bar=False)
            trainer.strategy.connect(m)
            trainer.save_checkpoint(root / f"m{seed}.ckpt")
        else:
            torch.save({"state_dict": m.state_dict()}, root / f"m{seed}.ckpt")
    (root / "run2.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "model": model_def}))
    data = {
        "class_path": "test_correlate_command.DemoTwoSets",
        "init_args": {
            "root": str(root / "demo"),
            "num_train": 4,
            "num_val": 4,
            "image_size": [64, 128],
            "crop_size": [64, 128],
            "eval_batch_size": 2,
            "num_workers": 0,
        },
    }
    config = {
        "zoo": [
            {"name": "m0", "checkpoint": str(root / "m0.ckpt"), "model": model_def},
            {"name": "m1", "checkpoint": str(root / "m1.ckpt"), "model": model_def},
            {"name": "m2", "checkpoint": str(root / "m2.ckpt"), "config": str(root / "run2.yaml")},
            {"name": "ckpt_only", "checkpoint": str(root / "m2.ckpt")},
        ],
        "data": data,
        "pairs": [{"synthetic": "demo_train", "real": "demo", "metrics": ["miou", "ece"]}],
        "output_dir": str(root / "out"),
        "trainer": {"accelerator": "cpu", "devices": 1},
        "bootstrap": 100,
        "subsample_sizes": [1, 2, 4],
        "subsample_repeats": 5,
        "progress": False,
    }
    (root / "zoo.yaml").write_text(yaml.safe_dump(config))
    return root


def test_end_to_end_tiny_zoo(tiny_zoo, capsys) -> None:
    out = tiny_zoo / "out"
    result = main(["--config", str(tiny_zoo / "zoo.yaml")])
    assert result["failed"] == ["ckpt_only"]
    saved = json.loads((out / "results.json").read_text())["models"]
    assert "add 'config: <run>/config.yaml' or a 'model:' definition" in saved["ckpt_only"]["error"]
    metrics = {n: saved[n]["metrics"] for n in ("m0", "m1", "m2")}
    assert all({"demo", "demo_train"} <= set(m) for m in metrics.values())
    # Different weights give different scores (the loaded checkpoints were applied).
    assert len({round(m["demo"]["miou"], 9) for m in metrics.values()}) == 3
    corr = json.loads((out / "correlations.json").read_text())["correlations"]
    pearson = next(r for r in corr if r["metric"] == "miou" and r["method"] == "pearson")
    xs = [metrics[n]["demo_train"]["miou"] for n in pearson["models"]]
    ys = [metrics[n]["demo"]["miou"] for n in pearson["models"]]
    assert pearson["n"] == 3 and pearson["coefficient"] == pytest.approx(stats.pearsonr(xs, ys)[0])
    curves = json.loads((out / "subsample.json").read_text())["curves"]
    miou_curve = next(c for c in curves if c["pair"].endswith("/miou"))
    assert miou_curve["status"] == "ok" and miou_curve["frames"] == 4
    assert [p["size"] for p in miou_curve["curve"]] == [1, 2, 4]
    # Per-frame confusion matrices reproduce the logged dataset-level mIoU exactly.
    assert miou_curve["full_set_from_frames"] == pytest.approx(miou_curve["full_set_logged"], abs=1e-5)
    assert (out / "plots" / "subsample_demo_train-vs-demo_miou.png").is_file()
    assert "demo_train~demo/miou: pearson" in capsys.readouterr().out
    # Resume: nothing left to evaluate but the failed entry, which fails again quickly.
    before = {n: saved[n]["seconds"] for n in ("m0", "m1", "m2")}
    main(["--config", str(tiny_zoo / "zoo.yaml"), "--retry_failed=false"])
    again = json.loads((out / "results.json").read_text())["models"]
    assert {n: again[n]["seconds"] for n in before} == before
