"""wandb sweep files and callback sets: structure, agent-style command lines accepted by the CLI."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))


def _sample(spec: dict, pick: int) -> object:
    """A deterministic stand-in for the agent's sampler (first/last value or distribution bound)."""
    if "values" in spec:
        return spec["values"][pick % len(spec["values"])]
    if "value" in spec:
        return spec["value"]
    lo, hi = spec["min"], spec["max"]
    return lo if pick == 0 else hi


def agent_command(sweep: dict, params: dict) -> list[str]:
    """The command line a wandb agent runs: the command block with ${args} as --name=value."""
    out: list[str] = []
    for token in sweep["command"]:
        if token == "${env}":
            continue
        if token == "${interpreter}":
            out.append(sys.executable)
        elif token == "${program}":
            out.append(sweep["program"])
        elif token == "${args}":
            out.extend(f"--{k}={v}" for k, v in params.items())
        else:
            out.append(token)
    return out


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_file_is_well_formed(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("bayes", "random", "grid")
    assert sweep["metric"]["goal"] in ("maximize", "minimize") and sweep["metric"]["name"].startswith("val/")
    assert sweep["program"] == "synthrel_lightning"
    cmd = sweep["command"]
    assert cmd[:5] == ["${env}", "${interpreter}", "-m", "${program}", "fit"] and cmd[-1] == "${args}"
    for config in [cmd[i + 1] for i, t in enumerate(cmd) if t == "--config"]:
        # "demo" names the packaged demo configuration.
        assert config == "demo" or (ROOT / config).is_file(), f"{path.name} names a missing config {config}"
    for name, spec in sweep["parameters"].items():
        assert "." in name and " " not in name, f"{name}: parameters must be flat dotted CLI names"
        if spec.get("distribution") == "log_uniform_values":
            assert 0 < spec["min"] < spec["max"]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
@pytest.mark.parametrize("pick", [0, 1])
def test_cli_accepts_agent_overrides(path: Path, pick: int, monkeypatch) -> None:
    from synthrel_lightning.cli import main

    monkeypatch.chdir(ROOT)
    sweep = yaml.safe_load(path.read_text())
    params = {k: _sample(v, pick) for k, v in sweep["parameters"].items()}
    argv = agent_command(sweep, params)
    assert argv[1:3] == ["-m", "synthrel_lightning"]
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
        main([*argv[3:], "--print_config"])
    assert exit_info.value.code in (0, None)
    merged = yaml.safe_load(buf.getvalue())
    for dotted, value in params.items():
        node = merged
        for part in dotted.split("."):
            node = node[part]
        assert node == value or (isinstance(value, float) and math.isclose(float(node), value)), dotted


def test_callback_sets_compose_with_the_demo_recipe(monkeypatch) -> None:
    from synthrel_lightning.cli import main

    monkeypatch.chdir(ROOT)
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "demo",
                "--config",
                "callbacks/reliability.yaml",
                "--config",
                "callbacks/wandb.yaml",
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None), "the CLI rejected the recipe + callback sets (see stderr)"
    merged = yaml.safe_load(buf.getvalue())
    classes = [c["class_path"] for c in merged["trainer"]["callbacks"]]
    assert classes == [
        "synthrel_lightning.callbacks.MetricCorrelation",
        "synthrel_lightning.callbacks.OODVisualization",
        "synthrel_lightning.callbacks.ReliabilityPlots",
        "lightning.pytorch.callbacks.ModelCheckpoint",
    ]
    assert merged["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    # The CSV logger's folder name ("logs") is not carried over as every wandb run's name.
    assert merged["trainer"]["logger"]["init_args"]["name"] is None


def test_agent_command_runs_offline(tmp_path) -> None:
    """One agent-style command, as wandb would run it, trains briefly and logs an offline wandb run."""
    sweep = yaml.safe_load((ROOT / "recipes" / "sweeps" / "demo.yaml").read_text())
    params = {k: _sample(v, 0) for k, v in sweep["parameters"].items()}
    # A short run (fast_dev_run would replace the wandb logger by a dummy one).
    argv = agent_command(sweep, params) + [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.num_train=8",
        "--data.init_args.num_val=4",
        f"--data.init_args.root={tmp_path}/demo",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_cityscapes_callback_set_composes_with_the_segformer_recipe(monkeypatch) -> None:
    from synthrel_lightning.cli import main

    monkeypatch.chdir(ROOT)
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                "recipes/cityscapes_segformer.yaml",
                "--config",
                "callbacks/reliability_cityscapes.yaml",
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None), "the CLI rejected the recipe + callback set (see stderr)"
    merged = yaml.safe_load(buf.getvalue())
    classes = [c["class_path"] for c in merged["trainer"]["callbacks"]]
    assert classes[-1] == "synthrel_lightning.synthesis.OutlierBankRefresh"
    refresh = merged["trainer"]["callbacks"][-1]["init_args"]
    assert refresh["bank_root"] == merged["data"]["init_args"]["outliers"]["init_args"]["source"]["init_args"]["bank"]


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


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_two_sweep_runs_in_one_folder_keep_their_own_config_and_summary(logger: str, tmp_path, monkeypatch) -> None:
    """Run names and folders are unique per run; every logger gets the complete settings (model, data, trainer)."""
    from synthrel_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    extra = ["--config", str(ROOT / "callbacks" / "wandb.yaml")] if logger == "wandb" else []
    save_dir = tmp_path / "runs"
    lrs = (0.001, 0.01)
    for lr in lrs:
        args = ["fit", "--config", "demo", *extra, *TINY, f"--trainer.logger.init_args.save_dir={save_dir}"]
        main([*args, "--data.init_args.root=demo_scenes", f"--model.init_args.optimizer.init_args.lr={lr}"])
    if logger == "wandb":
        import wandb

        wandb.finish()
    configs = sorted(save_dir.rglob("config.yaml"))
    configs = [c for c in configs if (c.parent / "metrics_summary.json").is_file()]
    assert len(configs) == 2 and configs[0].parent != configs[1].parent
    seen_lrs = set()
    names = set()
    for config_path in configs:
        config = yaml.safe_load(config_path.read_text())
        seen_lrs.add(config["model"]["init_args"]["optimizer"]["init_args"]["lr"])
        # The run id is left out of the saved configuration: a run started from it gets its own folder.
        assert config["trainer"]["logger"]["init_args"]["name" if logger == "wandb" else "version"] is None
        names.add(config_path.parent.name)
        assert (config_path.parent / "checkpoints" / "last.ckpt").is_file()
    assert seen_lrs == set(lrs)
    assert len(names) == 2 and "logs" not in names
    if logger == "csv":
        for config_path in configs:
            hparams = yaml.safe_load((config_path.parent / "hparams.yaml").read_text())
            assert hparams["data"]["init_args"]["num_train"] == 4
            assert hparams["trainer"]["max_epochs"] == 1 and "model" in hparams
    else:
        runs = sorted((save_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 2
        logged_lrs, run_names = set(), set()
        for run in runs:
            log = run.read_bytes()
            assert _wandb_config_item(log, "data")["init_args"]["num_train"] == 4
            assert _wandb_config_item(log, "trainer")["max_epochs"] == 1
            logged_lrs.add(_wandb_config_item(log, "model")["init_args"]["optimizer"]["init_args"]["lr"])
            run_names.add(re.search(rb"\d{8}-\d{6}-[0-9a-f]{6}", log).group(0))  # named by a run id
        assert len(run_names) == 2
        assert logged_lrs == set(lrs)
        assert not (save_dir / "metrics_summary.json").exists() and not (save_dir / "config.yaml").exists()


def _wandb_config_item(log: bytes, key: str) -> dict:
    """A config entry of an offline run, read from its transaction log (``run-<id>.wandb``).

    wandb stores config updates as protobuf ``ConfigItem`` records: field 1 the key, field 16
    (tag bytes 0x82 0x01) the JSON value, length-prefixed. The run's configuration is written in
    its first records, well inside the log's first 32 KiB block (no block header splits it).
    """
    head = b"\n" + bytes([len(key)]) + key.encode() + b"\x82\x01"
    i = log.index(head) + len(head)
    length = shift = 0
    while True:
        byte = log[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return json.loads(log[i : i + length])
