"""The local sweep runner (subprocesses with this Python, results table, resume, failures) and the agent's run.

The fast tests run a small sweep program (a real script, as any wandb sweep may name) that writes a
run summary like ``fit`` does; the slow ones run the demo sweep's ``fit`` for real.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from synthrel_lightning.cli import CommandError
from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.sweeps import run_local_sweep
from synthrel_lightning.sweeps.agent import agent_command, agent_environment, trial_function
from synthrel_lightning.sweeps.local import trial_environment
from synthrel_lightning.sweeps.spec import load_sweep

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = textwrap.dedent(
    """
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    x = int(args["x"])
    save_dir = args["trainer.logger.init_args.save_dir"]
    if x == 3 and not os.path.exists(os.environ["FIXED_MARKER"]):
        print("error: fit: x=3 is broken", file=sys.stderr)
        sys.exit(2)
    run = os.path.join(save_dir, "run")
    os.makedirs(run)
    with open(os.path.join(run, "interpreter.txt"), "w") as fh:
        fh.write(sys.executable + "\\n" + os.environ.get("WANDB_MODE", "") + "\\n" + args.get("bonus", ""))
    summary = {"metrics": {"val/toy": {"score": float(-((x - 2) ** 2)), "other": 1.0}}}
    with open(os.path.join(run, "metrics_summary.json"), "w") as fh:
        json.dump(summary, fh)
    """
)


@pytest.fixture
def toy_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A grid sweep over x in 1, 2, 3 of a program whose x=3 trial fails until a marker file exists."""
    (tmp_path / "toy.py").write_text(PROGRAM)
    sweep = {
        "program": "toy.py",
        "method": "grid",
        "metric": {"name": "val/toy/score", "goal": "maximize"},
        "parameters": {"x": {"values": [1, 2, 3]}},
        "command": ["${env}", "${interpreter}", "${program}", "${args}"],
    }
    path = tmp_path / "toy_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FIXED_MARKER", str(tmp_path / "fixed"))
    monkeypatch.setenv("WANDB_RUN_ID", "leaked-agent-run")  # must not reach a local trial
    return path


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_failing_trial_is_recorded_the_sweep_goes_on_and_a_rerun_retries_only_it(toy_sweep: Path) -> None:
    out = toy_sweep.parent / "sweep_out"
    result = run_local_sweep(toy_sweep, out, overrides=["bonus=7"])
    assert [t.status for t in result.trials] == ["finished", "finished", "failed"]
    failed = result.trials[2]
    assert failed.returncode == 2 and failed.error == "error: fit: x=3 is broken" and failed.metric is None
    assert Path(failed.log).read_text().strip() == "error: fit: x=3 is broken"
    # the trials ran with this interpreter, offline, with the override after the sampled parameters
    for trial in result.trials:
        assert trial.command[0] == sys.executable and trial.command[1] == "toy.py"
        assert trial.command[2:4] == [f"--x={trial.index + 1}", "--bonus=7"]
    recorded = (Path(result.trials[0].run_dir) / "interpreter.txt").read_text().splitlines()
    assert recorded == [sys.executable, "offline", "7"]
    assert [t.metric for t in result.trials[:2]] == [-1.0, 0.0]
    assert result.best is result.trials[1] and result.best.params == {"x": 2}
    rows = _rows(out)
    assert [(r["trial"], r["status"], r["val/toy/score"], r["x"]) for r in rows] == [
        ("0", "finished", "-1.0", "1"),
        ("1", "finished", "0.0", "2"),
        ("2", "failed", "", "3"),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["index"] == 1 and summary["failed"] == 1 and summary["interpreter"] == sys.executable
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"

    # rerun: finished trials are skipped (no second attempt), the failed one runs again and now finishes
    (toy_sweep.parent / "fixed").touch()
    again = run_local_sweep(toy_sweep, out, overrides=["bonus=7"])
    assert [t.status for t in again.trials] == ["finished"] * 3
    assert [t.attempt for t in again.trials] == [1, 1, 2]
    assert sorted(p.name for p in (out / "trials" / "0000").iterdir()) == ["attempt-1", "trial.json"]
    assert again.trials[0].seconds == result.trials[0].seconds  # the record kept, not a new run
    assert again.trials[2].metric == -1.0 and again.best is not None and again.best.index == 1
    assert [r["status"] for r in _rows(out)] == ["finished"] * 3


def test_the_output_folder_holds_one_sweep_and_never_a_foreign_folder(toy_sweep: Path) -> None:
    out = toy_sweep.parent / "sweep_out"
    (toy_sweep.parent / "fixed").touch()
    run_local_sweep(toy_sweep, out, runs=1)
    with pytest.raises(ValueError, match="another seed"):
        run_local_sweep(toy_sweep, out, runs=1, seed=1)
    with pytest.raises(ValueError, match="another overrides"):
        run_local_sweep(toy_sweep, out, runs=1, overrides=["bonus=1"])
    dataset = toy_sweep.parent / "my_dataset"
    dataset.mkdir()
    (dataset / "frame.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a sweep output folder"):
        run_local_sweep(toy_sweep, dataset, runs=1)
    assert sorted(p.name for p in dataset.iterdir()) == ["frame.png"]


def test_the_command_exits_1_when_a_trial_failed_and_2_on_bad_input(toy_sweep: Path, capsys) -> None:
    out = toy_sweep.parent / "cmd_out"
    with pytest.raises(SystemExit) as stop:
        cli_main(["sweep", "--config", str(toy_sweep), "--out", str(out)])
    assert stop.value.code == 1
    captured = capsys.readouterr()
    assert "2 of 3 trials finished" in captured.out and "best: trial 1, val/toy/score = 0" in captured.out
    assert "failed: trial 2: error: fit: x=3 is broken" in captured.err
    bad = toy_sweep.parent / "bad.yaml"
    sweep = yaml.safe_load(toy_sweep.read_text())
    sweep["parameters"]["x"] = {"distribution": "gaussian"}
    bad.write_text(yaml.safe_dump(sweep))
    with pytest.raises(CommandError) as err:
        cli_main(["sweep", "--config", str(bad), "--out", str(toy_sweep.parent / "o2"), "--runs", "2"])
    assert err.value.code == 2 and "parameter 'x': unknown distribution 'gaussian'" in str(err.value)
    with pytest.raises(CommandError, match="needs --config"):
        cli_main(["sweep", "--runs", "2"])
    with pytest.raises(CommandError, match="--runs belongs to a local sweep"):
        cli_main(["sweep", "--agent", "me/proj/abc", "--runs", "2"])


def test_a_local_trial_never_inherits_an_agents_run() -> None:
    env = trial_environment("offline", {"WANDB_RUN_ID": "r", "WANDB_SWEEP_ID": "s", "PATH": "/bin", "WANDB_MODE": "x"})
    assert env == {"PATH": "/bin", "WANDB_MODE": "offline"}
    with pytest.raises(ValueError, match="wandb_mode 'cloud'"):
        trial_environment("cloud")


def _agent_env(tmp_path: Path, params: dict) -> dict[str, str]:
    """What wandb's function agent puts in the environment before calling the function (pyagent._run_job)."""
    from wandb.sdk.lib import config_util

    path = tmp_path / "wandb" / "sweep-abc123" / "config-run00042.yaml"
    config_util.save_config_file_from_dict(str(path), {k: {"value": v} for k, v in params.items()})
    return {
        "WANDB_RUN_ID": "run00042",
        "WANDB_SWEEP_ID": "abc123",
        "WANDB_SWEEP_PARAM_PATH": str(path),
        "WANDB_SERVICE": "2-123-tcp-localhost-4567",
        "PATH": os.environ["PATH"],
    }


def test_the_agents_run_command_uses_this_python_and_the_runs_parameters(tmp_path: Path) -> None:
    sweep = load_sweep(ROOT / "recipes" / "sweeps" / "demo.yaml")
    env = _agent_env(tmp_path, {"model.init_args.optimizer.init_args.lr": 0.003, "trainer.max_epochs": 4})
    argv = agent_command(sweep, env, ["trainer.limit_train_batches=2"])
    assert argv == [
        sys.executable,
        *("-m", "synthrel_lightning", "fit", "--config", "demo", "--config", "callbacks/wandb.yaml"),
        "--model.init_args.optimizer.init_args.lr=0.003",
        "--trainer.max_epochs=4",
        "--trainer.limit_train_batches=2",
    ]
    child = agent_environment(env)
    assert "WANDB_SERVICE" not in child  # the subprocess starts its own service, as with wandb's command agent
    assert {k: child[k] for k in ("WANDB_RUN_ID", "WANDB_SWEEP_ID")} == {
        "WANDB_RUN_ID": "run00042",
        "WANDB_SWEEP_ID": "abc123",
    }
    with pytest.raises(RuntimeError, match="WANDB_RUN_ID, WANDB_SWEEP_ID, WANDB_SWEEP_PARAM_PATH not set"):
        agent_command(sweep, {"PATH": "/bin"})


TINY = [
    "trainer.enable_progress_bar=false",
    "data.init_args.num_train=4",
    "data.init_args.num_val=2",
    "data.init_args.image_size=[64,128]",
    "data.init_args.crop_size=[64,128]",
    "data.init_args.batch_size=2",
    "model.init_args.segmenter.init_args.width=8",
]


@pytest.mark.slow
def test_the_agents_run_joins_the_agents_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit started for an agent's run logs into that run (its id) with the sampled parameters as config."""
    from test_sweeps_config import _wandb_config_item

    monkeypatch.chdir(ROOT)
    for key, value in {
        **_agent_env(tmp_path, {"model.init_args.optimizer.init_args.lr": 0.0031}),
        "WANDB_MODE": "offline",
    }.items():
        monkeypatch.setenv(key, value)
    sweep = load_sweep(ROOT / "recipes" / "sweeps" / "demo.yaml")
    save_dir = tmp_path / "runs"
    extra = [
        *TINY,
        "trainer.max_epochs=1",
        f"data.init_args.root={tmp_path}/demo",
        f"trainer.logger.init_args.save_dir={save_dir}",
    ]
    trial_function(sweep, extra)()
    runs = list((save_dir / "wandb").glob("offline-run-*-run00042/run-run00042.wandb"))
    assert len(runs) == 1, list((save_dir / "wandb").iterdir())
    log = runs[0].read_bytes()
    assert b"abc123" in log  # the run belongs to the sweep
    assert _wandb_config_item(log, "model.init_args.optimizer.init_args.lr") == 0.0031
    config = yaml.safe_load((save_dir / "synthrel-lightning" / "run00042" / "config.yaml").read_text())
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.0031


@pytest.mark.slow
def test_local_sweep_runs_the_demo_sweep_with_this_python_and_resumes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sweep"
    overrides = [*TINY, "trainer.max_epochs=1", f"data.init_args.root={tmp_path}/demo"]
    result = run_local_sweep(ROOT / "recipes" / "sweeps" / "demo.yaml", out, runs=2, seed=0, overrides=overrides)
    assert [t.status for t in result.trials] == ["finished", "finished"], [t.error for t in result.trials]
    metrics = []
    for trial in result.trials:
        assert trial.command[:3] == [sys.executable, "-m", "synthrel_lightning"]
        run = Path(trial.run_dir)
        assert run.is_relative_to(out / "trials" / f"{trial.index:04d}" / "attempt-1")
        value = json.loads((run / "metrics_summary.json").read_text())["metrics"]["val/demo_objects"]["ap"]
        assert trial.metric == value
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["init_args"]["ood_score"] == trial.params["model.init_args.ood_score"]
        assert list((run.parent.parent / "wandb").glob("offline-run-*"))
        metrics.append(value)
    assert [float(r["val/demo_objects/ap"]) for r in _rows(out)] == metrics
    best = max(range(2), key=lambda i: metrics[i])
    assert result.best is not None and result.best.index == best
    assert json.loads((out / "summary.json").read_text())["best"]["index"] == best
    before = sorted(str(p) for p in out.rglob("*"))
    again = run_local_sweep(ROOT / "recipes" / "sweeps" / "demo.yaml", out, runs=2, seed=0, overrides=overrides)
    assert [t.metric for t in again.trials] == metrics
    assert sorted(str(p) for p in out.rglob("*")) == before  # nothing ran again


@pytest.mark.parametrize("config", [None, "recipes/sweeps/demo.yaml"], ids=["server", "file"])
def test_the_agent_without_an_account_says_so_in_one_line(config, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("HOME", "WANDB_CONFIG_DIR", "WANDB_DIR", "NETRC"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    args = ["sweep", "--agent", "me/proj/abc123", "--count", "1", *(["--config", config] if config else [])]
    with pytest.raises(CommandError) as err:
        cli_main(args)
    assert err.value.code == 2
    assert str(err.value).startswith("sweep: the W&B agent needs a W&B account and the network: No API key")
