"""The command line: explicit demo, recipes, overrides, per-run folders, cause-first errors, predict report, logging."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthrel_lightning.cli import DEMO_CONFIG, main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p
    for p in (REPO / "recipes").glob("*.yaml")
    if not p.name.startswith(("correlate", "generate", "caption", "zoo", "paper_study"))
)
CORRELATE_RECIPES = sorted((REPO / "recipes").glob("correlate*.yaml"))
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.num_train=4",
    "--data.init_args.num_val=2",
    "--data.init_args.image_size=[64,128]",
    "--data.init_args.crop_size=[64,128]",
    "--data.init_args.batch_size=2",
    "--model.init_args.segmenter.init_args.width=8",
]
"""A demo small enough for a test: one epoch on 4 training frames of 64x128."""


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "synthrel_lightning", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _error_line(err: str) -> str:
    """The message line (other lines may come from Lightning, e.g. "Seed set to 0")."""
    return next(line for line in err.splitlines() if line.startswith("error:"))


def _exit_code(args: list[str]) -> int | str | None:
    """The exit status of ``main(args)`` (0 when it returns)."""
    try:
        main(args)
    except SystemExit as info:
        return info.code or 0
    return 0


def test_help_is_quick_and_does_not_import_heavy_libraries(tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.argv=['synthrel_lightning','--help'];"
        "runpy.run_module('synthrel_lightning', run_name='__main__');"
        "heavy=[m for m in ('diffusers','transformers','wandb','lightning','matplotlib') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "fit|validate|test|predict" in out.stdout and "demo" in out.stdout and "HEAVY []" in out.stdout


def test_unknown_subcommand_is_reported() -> None:
    with pytest.raises(SystemExit, match="unknown subcommand 'frobnicate'"):
        main(["frobnicate"])


@pytest.mark.parametrize("recipe", [*RECIPES, "demo"], ids=[*(r.stem for r in RECIPES), "demo"])
def test_every_recipe_parses_and_prints_its_config(recipe: Path | str, tmp_path: Path) -> None:
    out = _run(["fit", "--config", str(recipe), "--print_config"], cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["class_path"].startswith(("synthrel_lightning.models", "synthrel_lightning.generators"))
    assert "class_path" in config["data"]


def test_the_demo_config_has_one_source() -> None:
    """The packaged file is the only demo configuration; ``--config demo`` names it."""
    assert DEMO_CONFIG.is_file() and not (REPO / "recipes" / "demo.yaml").exists()


def test_overrides_reach_the_model_and_later_arguments_win(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", "demo", "--model.init_args.ood_score=msp", "--model.init_args.ood_score=rba"]
    assert _exit_code([*args, "--trainer.max_epochs=3", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["ood_score"] == "rba"
    assert config["trainer"]["max_epochs"] == 3


@pytest.mark.parametrize("sub", ["fit", "validate", "predict"])
def test_a_dataset_root_without_config_is_refused_and_left_untouched(
    sub: str, tmp_path: Path, cityscapes_mini: Path, monkeypatch, capsys
) -> None:
    """12.1: a --data option without --config never falls back to the demo (which would write scenes there)."""
    root = tmp_path / "cityscapes"
    shutil.copytree(cityscapes_mini, root)
    before = _tree_digest(root)
    monkeypatch.chdir(tmp_path)
    assert _exit_code([sub, f"--data.init_args.root={root}", "--trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sub} needs a configuration: pass --config")
    assert "python -m synthrel_lightning demo" in err
    assert _tree_digest(root) == before
    assert not (tmp_path / "outputs").exists()


def test_bad_option_value_leads_with_the_cause(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert _exit_code(["fit", "--config", "demo", "--trainer.max_epochs=abc"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: fit: trainer.max_epochs: Expected a <class 'int'> (given: abc)"
    assert "usage:" not in err and len(err.splitlines()) == 2

    assert _exit_code(["fit", "--config", "demo", "--model.init_args.segmenter.init_args.width=wide"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("error: fit: model.init_args.segmenter.init_args.width (TinySegmenter): ")
    assert "wide" in first


def test_constructor_rejection_leads_with_the_cause_and_verbose_adds_the_report(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = ["fit", "--config", "demo", "--model.init_args.scheduler_interval=weekly"]
    assert _exit_code(bad) == 2
    err = capsys.readouterr().err
    assert _error_line(err) == "error: fit: model: scheduler_interval must be 'epoch' or 'step', got 'weekly'"
    assert "Subtypes" not in err and "--verbose" in err

    assert _exit_code([*bad, "--verbose"]) == 2
    err = capsys.readouterr().err
    assert _error_line(err).startswith("error: fit: model: scheduler_interval")
    assert "full report:" in err and "Subtypes" in err

    monkeypatch.setenv("SYNTHREL_VERBOSE", "1")
    assert _exit_code(bad) == 2
    assert "full report:" in capsys.readouterr().err


def test_demo_end_to_end_then_load_and_predict(tmp_path: Path, monkeypatch, capsys) -> None:
    """The demo command says what it runs, logs at INFO, writes a run folder; the checkpoint loads by path (12.8);
    predict honours prediction_dir with --ckpt_path and says what it wrote (12.9); files follow the umask (11)."""
    from synthrel_lightning.models import OODSegmenter

    monkeypatch.chdir(tmp_path)
    old_umask = os.umask(0o022)
    try:
        assert _exit_code(["demo", *TINY]) == 0
        out = capsys.readouterr()
        assert "Running the embedded demo" in out.err and str(DEMO_CONFIG) in out.err
        assert "INFO synthrel_lightning" in out.err and "run folder:" in out.err
        assert "Metrics after fit" in out.out and "miou is the mean IoU over the classes present" in out.out
        runs = list((tmp_path / "outputs" / "demo" / "logs").iterdir())
        assert len(runs) == 1 and not runs[0].name.startswith("version_")
        run = runs[0]
        summary = json.loads((run / "metrics_summary.json").read_text())
        assert 0.0 <= summary["metrics"]["val/demo"]["miou"] <= 1.0
        assert {"auroc", "ap", "fpr95"} <= set(summary["metrics"]["val/demo_objects"])
        assert "classes present" in summary["miou_convention"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["data"]["init_args"]["num_train"] == 4
        assert (tmp_path / "outputs" / "demo" / "cityscapes" / "leftImg8bit" / "train").is_dir()

        ckpt = run / "checkpoints" / "last.ckpt"
        model = OODSegmenter.load_from_checkpoint(ckpt)
        assert type(model.segmenter).__name__ == "TinySegmenter" and next(model.segmenter.parameters()).shape[0] == 8

        preds = tmp_path / "my_predictions"
        predict = ["predict", "--config", "demo", *TINY[2:], f"--ckpt_path={ckpt}"]
        overrides = [f"--model.init_args.prediction_dir={preds}", "--model.init_args.ood_score=entropy"]
        assert _exit_code([*predict, *overrides]) == 0
        err = capsys.readouterr().err
        # The checkpoint's model settings win (Lightning's rule), and the replaced option is named.
        assert "replace the configured ood_score='entropy' -> 'msp' (checkpoint wins)" in err
        written = sorted(p.name for p in preds.iterdir())
        frames = sum(n.endswith("_score.npy") for n in written)  # with pred, pred_color, heatmap and overlay
        assert frames and len(written) == 5 * frames
        assert f"wrote {len(written)} files ({frames} frames" in err and str(preds) in err

        product = [*preds.iterdir(), run / "metrics_summary.json", run / "metrics_summary.md", run / "config.yaml"]
        product += list((tmp_path / "outputs" / "demo" / "cityscapes").rglob("*.png"))[:4]
        assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in product} == {oct(0o644)}
    finally:
        os.umask(old_umask)


@pytest.mark.parametrize("recipe", CORRELATE_RECIPES, ids=[r.stem for r in CORRELATE_RECIPES])
def test_correlate_recipes_parse(recipe: Path) -> None:
    from synthrel_lightning.commands.correlate import build_parser

    cfg = build_parser().parse_args(["--config", str(recipe)])
    assert len(cfg.zoo) >= 2 and cfg.pairs
    names = {p["synthetic"] if isinstance(p, dict) else p.synthetic for p in cfg.pairs}
    assert names


def test_each_command_starts_a_new_run_and_launched_ranks_share_it(monkeypatch) -> None:
    from synthrel_lightning.runs import RUN_ID_ENV, current_run_id

    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    first = current_run_id(fresh=True)
    second = current_run_id(fresh=True)
    assert first != second and current_run_id() == second
    # A process launched for a distributed run (LOCAL_RANK set) keeps its launcher's id.
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_run_id(fresh=True) == second
