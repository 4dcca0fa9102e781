"""The command line: demo default, recipes, overrides, --print_config, tools, quick --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthrel_lightning.cli import DEMO_CONFIG, main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(
    p for p in (REPO / "recipes").glob("*.yaml") if not p.name.startswith(("correlate", "generate", "caption", "zoo"))
)
CORRELATE_RECIPES = sorted((REPO / "recipes").glob("correlate*.yaml"))


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "synthrel_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_help_is_quick_and_does_not_import_heavy_libraries(tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.argv=['synthrel_lightning','--help'];"
        "runpy.run_module('synthrel_lightning', run_name='__main__');"
        "heavy=[m for m in ('diffusers','transformers','wandb','lightning','matplotlib') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "fit|validate|test|predict" in out.stdout and "HEAVY []" in out.stdout


def test_unknown_subcommand_is_reported() -> None:
    with pytest.raises(SystemExit, match="unknown subcommand 'frobnicate'"):
        main(["frobnicate"])


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_parses_and_prints_its_config(recipe: Path, tmp_path: Path) -> None:
    out = _run(["fit", "--config", str(recipe), "--print_config"], cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["class_path"].startswith(("synthrel_lightning.models", "synthrel_lightning.generators"))
    assert "class_path" in config["data"]


def test_overrides_reach_the_model_and_later_arguments_win(tmp_path: Path) -> None:
    out = _run(
        [
            "fit",
            "--config",
            str(DEMO_CONFIG),
            "--model.init_args.ood_score=msp",
            "--model.init_args.ood_score=rba",
            "--trainer.max_epochs=3",
            "--print_config",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    config = yaml.safe_load(out.stdout)
    assert config["model"]["init_args"]["ood_score"] == "rba"
    assert config["trainer"]["max_epochs"] == 3


def test_fit_without_config_runs_the_demo_end_to_end(tmp_path: Path) -> None:
    """The main job with no configuration: scenes written, trained, validated, checkpoint + summary written."""
    out = _run(
        ["fit", "--trainer.max_epochs=1", "--data.init_args.num_train=8", "--data.init_args.num_val=4"], cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-5000:]
    summaries = list((tmp_path / "outputs" / "demo" / "logs").glob("version_*/metrics_summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert 0.0 <= summary["metrics"]["val/demo"]["miou"] <= 1.0
    assert 0.0 <= summary["metrics"]["val/demo_objects"]["ap"] <= 1.0
    assert list((tmp_path / "outputs" / "demo" / "logs").glob("version_*/checkpoints/*.ckpt"))
    assert (tmp_path / "outputs" / "demo" / "cityscapes" / "leftImg8bit" / "train").is_dir()
    assert "Metrics after fit" in out.stdout


@pytest.mark.parametrize("recipe", CORRELATE_RECIPES, ids=[r.stem for r in CORRELATE_RECIPES])
def test_correlate_recipes_parse(recipe: Path) -> None:
    from synthrel_lightning.commands.correlate import build_parser

    cfg = build_parser().parse_args(["--config", str(recipe)])
    assert len(cfg.zoo) >= 2 and cfg.pairs
    names = {p["synthetic"] if isinstance(p, dict) else p.synthetic for p in cfg.pairs}
    assert names
