"""The correlate command: results store, resume, failure isolation, honest small-n statistics, outputs, end to end."""

from __future__ import annotations

import csv
import json
import logging
from argparse import ArgumentError

import pytest
import torch
import yaml
from scipy import stats

from synthrel_lightning.commands.correlate import build_parser, main
from synthrel_lightning.correlation.evaluate import run_zoo
from synthrel_lightning.correlation.pairs import Pair, correlate_results
from synthrel_lightning.correlation.results import ResultsStore
from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.data import DemoDataModule
from synthrel_lightning.models import OODSegmenter

SCORES = {"m1": (0.30, 0.21), "m2": (0.42, 0.35), "m3": (0.55, 0.41), "m4": (0.61, 0.60)}


def _evaluate(calls: list[str]):
    def fn(entry: ZooEntry):
        calls.append(entry.name)
        if entry.name == "broken":
            raise RuntimeError("checkpoint is truncated")
        s, r = SCORES[entry.name]
        return {"synthetic_fog": {"miou": s, "mean_F1": s / 2}, "acdc_fog": {"miou": r, "mean_F1": r * r}}

    return fn


def test_run_zoo_records_failures_resumes_and_correlates(tmp_path, caplog) -> None:
    entries = [ZooEntry("m1"), ZooEntry("broken"), ZooEntry("m2"), ZooEntry("m3")]
    calls: list[str] = []
    with caplog.at_level(logging.INFO, logger="synthrel_lightning"):
        store = run_zoo(entries, _evaluate(calls), ResultsStore(tmp_path), progress=False)
    assert calls == ["m1", "broken", "m2", "m3"]
    # Per-model progress at INFO, failures at ERROR.
    assert "correlate: [3/4] m2: evaluating" in caplog.messages
    assert any(m.startswith("correlate: [3/4] m2: 4 metrics on 2 sets in") for m in caplog.messages)
    assert "correlate: [2/4] broken: failed: RuntimeError: checkpoint is truncated" in caplog.messages
    saved = json.loads((tmp_path / "results.json").read_text())["models"]
    assert saved["broken"]["status"] == "failed" and saved["broken"]["error"] == "RuntimeError: checkpoint is truncated"
    assert saved["m2"]["metrics"]["acdc_fog"]["miou"] == 0.35
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {(r["model"], r["set"], r["metric"]) for r in rows if r["status"] == "ok"} == {
        (m, s, k) for m in ("m1", "m2", "m3") for s in ("synthetic_fog", "acdc_fog") for k in ("miou", "mean_F1")
    }
    # A rerun with one more model evaluates only the new one and (by default) the failed one.
    calls.clear()
    store = run_zoo([*entries, ZooEntry("m4")], _evaluate(calls), ResultsStore(tmp_path), progress=False)
    assert calls == ["broken", "m4"]
    calls.clear()
    run_zoo([*entries, ZooEntry("m4")], _evaluate(calls), ResultsStore(tmp_path), retry_failed=False, progress=False)
    assert calls == []
    with caplog.at_level(logging.WARNING, logger="synthrel_lightning"):
        out = correlate_results(store.ok_metrics(), [Pair("synthetic_fog", "acdc_fog", ["miou", "mean_F1"])], tmp_path)
    pearson = next(r for r in out if r["method"] == "pearson" and r["metric"] == "miou")
    xs, ys = zip(*SCORES.values())
    assert pearson["coefficient"] == pytest.approx(stats.pearsonr(xs, ys)[0])
    assert pearson["n"] == 4 and sorted(pearson["models"]) == ["m1", "m2", "m3", "m4"]
    # Four models ranked identically: exact p = 2/24, a wide interval and a plain warning, in the file and the log.
    spearman = next(r for r in out if r["method"] == "spearman" and r["metric"] == "miou")
    assert spearman["coefficient"] == pytest.approx(1.0) and spearman["p_value"] == pytest.approx(2 / 24)
    assert spearman["ci_low"] < 0 and spearman["ci_high"] == pytest.approx(1.0)
    assert spearman["warning"].startswith("only 4 models")
    assert any("synthetic_fog~acdc_fog/miou: only 4 models" in m for m in caplog.messages)
    # Any logged metric pairs up, not only a fixed list (component metrics such as mean_F1).
    f1 = next(r for r in out if r["method"] == "pearson" and r["metric"] == "mean_F1")
    assert f1["coefficient"] == pytest.approx(stats.pearsonr([x / 2 for x in xs], [y * y for y in ys])[0])
    for suffix in ("png", "svg", "pdf"):
        assert (tmp_path / "plots" / f"scatter_synthetic_fog-vs-acdc_fog_miou.{suffix}").stat().st_size > 1000
    assert pearson["plot_files"][0].endswith(".png") and len(pearson["plot_files"]) == 3
    csv_rows = list(csv.DictReader((tmp_path / "correlations.csv").open()))
    assert [r["method"] for r in csv_rows] == ["pearson", "spearman", "kendall"] * 2
    assert csv_rows[1]["interval"] == "copula" and csv_rows[1]["p_method"] == "exact permutation (24 pairings)"


def test_a_metric_never_logged_names_what_was(tmp_path, caplog) -> None:
    results = {m: _evaluate([])(ZooEntry(m)) for m in SCORES}
    with caplog.at_level(logging.WARNING, logger="synthrel_lightning"):
        rows = correlate_results(results, [Pair("synthetic_fog", "acdc_fog", ["sIoU"])], tmp_path, plots=False)
    assert all(r["status"] == "not_enough_points" for r in rows)
    assert any(
        "sIoU was never logged on synthetic_fog (logged there: mean_F1, miou); acdc_fog" in m for m in caplog.messages
    )


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


class DemoTwoSets(DemoDataModule):
    """Demo scenes served as two named evaluation sets: the val frames ("demo") and the train frames ("demo_train")."""

    def build_sets(self) -> None:
        super().build_sets()
        self.val_sets = {**self.val_sets, "demo_train": self.train_set}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Three tiny OOD segmenters (different seeds) saved as checkpoints, plus a config for the demo datamodule."""
    from synthrel_lightning.models import TinySegmenter

    root = tmp_path_factory.mktemp("zoo")
    seg = {
        "class_path": "synthrel_lightning.models.TinySegmenter",
        "init_args": {"num_classes": 19, "width": 8, "depth": 1},
    }
    model_def = {"class_path": "synthrel_lightning.models.OODSegmenter", "init_args": {"segmenter": seg}}
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
        "pairs": [{"synthetic": "demo_train", "real": "demo", "metrics": ["miou", "ece", "nll"]}],
        "output_dir": str(root / "out"),
        "trainer": {"accelerator": "cpu", "devices": 1},
        "subsample_sizes": [1, 2, 4],
        "subsample_repeats": 5,
        "progress": False,
    }
    (root / "zoo.yaml").write_text(yaml.safe_dump(config))
    return root


def test_end_to_end_tiny_zoo(tiny_zoo, capsys) -> None:
    out = tiny_zoo / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tiny_zoo / "zoo.yaml")])
    assert exit_info.value.code == 1
    printed = capsys.readouterr()
    assert (
        "correlate: 1 model(s) failed" in printed.err and "ckpt_only: TypeError: zoo entry 'ckpt_only'" in printed.err
    )
    saved = json.loads((out / "results.json").read_text())["models"]
    assert "add 'config: <run>/config.yaml' or a 'model:' definition" in saved["ckpt_only"]["error"]
    assert saved["ckpt_only"]["error"].endswith("(the following arguments are required: segmenter)")
    metrics = {n: saved[n]["metrics"] for n in ("m0", "m1", "m2")}
    assert all({"demo", "demo_train"} <= set(m) for m in metrics.values())
    # Different weights give different scores (the loaded checkpoints were applied).
    assert len({round(m["demo"]["miou"], 9) for m in metrics.values()}) == 3
    corr = json.loads((out / "correlations.json").read_text())["correlations"]
    for metric in ("miou", "nll"):  # nll: a metric outside the per-frame list pairs up all the same
        pearson = next(r for r in corr if r["metric"] == metric and r["method"] == "pearson")
        xs = [metrics[n]["demo_train"][metric] for n in pearson["models"]]
        ys = [metrics[n]["demo"][metric] for n in pearson["models"]]
        assert pearson["n"] == 3 and pearson["coefficient"] == pytest.approx(stats.pearsonr(xs, ys)[0])
        # Three models: a plain warning and an interval that is not a point.
        assert pearson["warning"].startswith("only 3 models") and pearson["ci_high"] - pearson["ci_low"] > 0.1
    curves = {c["pair"]: c for c in json.loads((out / "subsample.json").read_text())["curves"]}
    miou_curve = curves["demo_train~demo/miou"]
    assert miou_curve["status"] == "ok" and miou_curve["frames"] == 4
    assert [p["size"] for p in miou_curve["curve"]] == [1, 2, 4]
    # Per-frame statistics read from the evaluation result reproduce the logged dataset-level metrics.
    assert miou_curve["full_set_from_frames"] == pytest.approx(miou_curve["full_set_logged"], abs=1e-5)
    ece_curve = curves["demo_train~demo/ece"]
    assert ece_curve["full_set_from_frames"] == pytest.approx(ece_curve["full_set_logged"], abs=1e-5)
    assert curves["demo_train~demo/nll"]["status"] == "no_frame_statistics"
    for suffix in ("png", "svg", "pdf"):
        assert (out / "plots" / f"subsample_demo_train-vs-demo_miou.{suffix}").is_file()
    # The report: correlations, the warning, and what was written where.
    assert "demo_train~demo/miou: pearson r=" in printed.out
    assert "warning: only 3 models" in printed.out
    assert f"correlate: 3 of 4 models evaluated (1 failed); outputs in {out}" in printed.out
    assert f"results: {out / 'results.json'}, {out / 'results.csv'}" in printed.out
    assert str(out / "frame_stats" / "m0.npz") in printed.out
    # Resume: nothing left to evaluate but the failed entry, which fails again quickly.
    before = {n: saved[n]["seconds"] for n in ("m0", "m1", "m2")}
    with pytest.raises(SystemExit):
        main(["--config", str(tiny_zoo / "zoo.yaml"), "--retry_failed=false"])
    again = json.loads((out / "results.json").read_text())["models"]
    assert {n: again[n]["seconds"] for n in before} == before


class _OpensFileWhenUnpickled:
    """Pickles as a call to ``open(path, "w")``: loading it would create the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_checkpoint_is_refused_with_a_nonzero_exit(tiny_zoo, tmp_path, capsys) -> None:
    from synthrel_lightning.cli import main as cli_main

    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": _OpensFileWhenUnpickled(str(marker))}, tmp_path / "crafted.ckpt")
    config = yaml.safe_load((tiny_zoo / "zoo.yaml").read_text())
    config["zoo"] = [{"name": "crafted", "checkpoint": str(tmp_path / "crafted.ckpt")}]
    config["output_dir"] = str(tmp_path / "out")
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["correlate", "--config", str(tmp_path / "zoo.yaml")])
    assert exit_info.value.code == 1
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "crafted: CheckpointError: correlate: zoo entry 'crafted': checkpoint" in err
    assert "holds objects that are not plain tensors or values" in err and "--trust_checkpoint" in err
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["models"]
    assert saved["crafted"]["status"] == "failed" and "CheckpointError" in saved["crafted"]["error"]


def test_options_come_from_the_library_signature() -> None:
    cfg = build_parser().parse_args(
        [
            "--zoo=[{name: a, checkpoint: a.ckpt}]",
            "--data=lightning.LightningDataModule",
            "--pairs=[{synthetic: s, real: r}]",
        ]
    )
    assert cfg.interval == "auto" and cfg.trust_checkpoint is False and cfg.pairs[0].metrics == ["miou"]
    with pytest.raises(ArgumentError, match="interval"):
        build_parser().parse_args(
            ["--zoo=[{name: a}]", "--data=lightning.LightningDataModule", "--pairs=[]", "--interval=percentile"]
        )


def test_a_zoo_file_replaces_the_study_zoo() -> None:
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    study = build_parser().parse_args(["--config", str(recipes / "correlate_cityscapes.yaml")])
    both = build_parser().parse_args(
        [
            "--config",
            str(recipes / "correlate_cityscapes.yaml"),
            "--config",
            str(recipes / "zoo_cityscapes_public.yaml"),
        ]
    )
    zoo = yaml.safe_load((recipes / "zoo_cityscapes_public.yaml").read_text())["zoo"]
    assert [e.name for e in both.zoo] == [e["name"] for e in zoo]
    assert both.pairs == study.pairs and both.output_dir == study.output_dir


@pytest.mark.slow
def test_multi_process_evaluation_saves_no_partial_frame_statistics(tiny_zoo, tmp_path, caplog) -> None:
    from synthrel_lightning.correlation.evaluate import TrainerEvaluator

    config = yaml.safe_load((tiny_zoo / "zoo.yaml").read_text())
    data = DemoTwoSets(**config["data"]["init_args"])
    entry = ZooEntry(**config["zoo"][0])
    # Without the metrics summary: it reads trainer.log_dir (a collective) on rank 0 only, which fails with 2 processes.
    entry.model = {**entry.model, "init_args": {**entry.model["init_args"], "summary": False}}
    trainer = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    evaluator = TrainerEvaluator(data, trainer, tmp_path / "frame_stats", {"demo_train": ["miou"]}, tmp_path / "models")
    with caplog.at_level(logging.WARNING, logger="synthrel_lightning"):
        metrics = evaluator(entry)
    assert 0.0 <= metrics["demo_train"]["miou"] <= 1.0
    assert not (tmp_path / "frame_stats").exists()
    assert any("per-frame statistics are not saved with 2 processes" in m for m in caplog.messages)


def test_processes_other_than_global_rank_zero_evaluate_but_write_and_print_nothing(
    tiny_zoo, tmp_path, monkeypatch, capsys
) -> None:
    """One report per run: the study's correlation/report stage runs on global rank 0 only."""
    config = yaml.safe_load((tiny_zoo / "zoo.yaml").read_text())
    config["zoo"] = config["zoo"][:2]
    for entry in config["zoo"]:
        # (Lightning's own rank-zero guard of the metrics summary reads the rank of a real launch.)
        entry["model"]["init_args"]["summary"] = False
    config["output_dir"] = str(tmp_path / "out")
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(config))
    evaluated = []
    from synthrel_lightning.correlation import evaluate

    real_call = evaluate.TrainerEvaluator.__call__

    def counting(self, entry):
        evaluated.append(entry.name)
        return real_call(self, entry)

    monkeypatch.setattr(evaluate.TrainerEvaluator, "__call__", counting)
    monkeypatch.setenv("SLURM_PROCID", "1")  # the second task of an srun job
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    report = main(["--config", str(tmp_path / "zoo.yaml")])
    assert evaluated == ["m0", "m1"]  # it took part in every evaluation
    assert not report.primary and report.correlations == []
    assert not (tmp_path / "out" / "results.json").exists()
    assert not (tmp_path / "out" / "correlations.json").exists()
    assert capsys.readouterr().out == ""
