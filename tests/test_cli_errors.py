"""One error path for every command: ``error: <command>: <cause>`` first, in one line, exit status 2."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from synthrel_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]


def _fails(args: list[str], capsys) -> list[str]:
    """Run ``main(args)``, expect exit status 2, return the error block (the lines from ``error:`` on)."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2, f"exit status {info.value.code!r}"
    err = capsys.readouterr().err
    # (A "--- Logging error ---" report is a log handler of an earlier test writing to its closed capture.)
    assert err.count("Traceback") == err.count("--- Logging error ---") and "usage:" not in err, err
    lines = err.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    block = lines[start:]
    # The cause, then at most the hint that --verbose shows the full report.
    assert len(block) <= 2 and (len(block) == 1 or block[1].startswith("(full report")), block
    return block


@pytest.mark.parametrize("sub", ["validate", "fit"])
def test_a_corrupt_ckpt_path_is_named_in_one_line(sub: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip archive")
    block = _fails([sub, "--config", "demo", "--ckpt_path", str(bad)], capsys)
    assert block[0].startswith(f"error: {sub}: ") and str(bad) in block[0]
    assert "truncated or corrupt" in block[0]


def test_a_missing_ckpt_path_is_named_before_anything_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    block = _fails(["test", "--config", "demo", "--ckpt_path", "nowhere/last.ckpt"], capsys)
    assert block[0] == "error: test: --ckpt_path nowhere/last.ckpt: no such checkpoint file"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_accelerator_gpu_without_a_gpu_leads_with_the_cause(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    block = _fails(["validate", "--config", "demo", "--trainer.accelerator=gpu"], capsys)
    assert block[0].startswith("error: validate: ") and "gpu" in block[0].lower()


def test_a_missing_optional_dependency_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    args = ["fit", "--config", "demo", "--config", str(REPO / "callbacks" / "wandb.yaml"), "--trainer.max_epochs=1"]
    block = _fails(args, capsys)
    assert block[0].startswith("error: fit: ") and "wandb" in block[0] and "pip install" in block[0]


@pytest.mark.parametrize("sub", ["fit", "calibrate", "correlate", "sml_stats", "generate"])
def test_a_yaml_syntax_error_names_the_file(sub: str, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "recipe.yaml"
    bad.write_text("model:\n  init_args: [1, 2\n  data: 3\n")
    block = _fails([sub, "--config", str(bad)], capsys)
    assert block[0].startswith(f"error: {sub}: {bad}: not valid YAML (line ")
    assert "<unicode string>" not in "\n".join(block)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["calibrate", "--nonsense", "1"], "error: calibrate: "),
        (["caption", "--split", "val"], "error: caption: "),
        (["import_controlnet", "--checkpoint", "x.ckpt", "--out", "o"], "error: import_controlnet: "),
        (["generate", "--max_frames", "many"], "error: generate: "),
        (["correlate", "--interval", "percentile"], "error: correlate: "),
    ],
)
def test_tool_option_errors_lead_with_the_cause(args: list[str], expected: str, capsys) -> None:
    block = _fails(args, capsys)
    assert block[0].startswith(expected), block


def test_tool_runtime_errors_lead_with_the_cause(tmp_path: Path, capsys) -> None:
    """A checkpoint that is not one, read by a tool: the file is named, no traceback."""
    bad = tmp_path / "weights.ckpt"
    bad.write_bytes(b"hello")
    args = ["import_controlnet", "--checkpoint", str(bad), "--original_config", str(bad), "--out", str(tmp_path / "o")]
    block = _fails(args, capsys)
    assert block[0].startswith("error: import_controlnet: ") and str(bad) in block[0]


def test_misspelt_options_are_not_taken_as_abbreviations(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    block = _fails(["fit", "--config", "demo", "--trainer.max_epoch=1", "--print_config"], capsys)
    assert "max_epoch" in block[0]
    block = _fails(["calibrate", "--ckpt_pat", "x.ckpt"], capsys)
    assert "ckpt_pat" in block[0]


def test_bare_fit_asks_for_a_config_and_points_at_demo(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    block = _fails(["fit"], capsys)
    assert block[0].startswith("error: fit needs a configuration: pass --config")
    assert "python -m synthrel_lightning demo" in block[0]
    assert not (tmp_path / "outputs").exists()


def test_trainer_help_names_the_real_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m synthrel_lightning fit"), out[:200]


def _loads(checkpoint: str, trusted: bool = False) -> bool:
    """A function with the ``trusted`` opt-in, as the library's loaders have."""
    return trusted


def test_one_opt_in_flag_name_everywhere() -> None:
    from synthrel_lightning.commands import calibrate, correlate, import_controlnet, sml_stats
    from synthrel_lightning.commands._parsing import function_parser, parse_kwargs

    for module in (calibrate, correlate, sml_stats, import_controlnet):
        text = module.build_parser().format_help()
        assert "--trust_checkpoint" in text, module.__name__
    parser = function_parser("loads", _loads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_kwargs(parser, _loads, ["--checkpoint", "a"])[1] == {"checkpoint": "a", "trusted": False}
        assert parse_kwargs(parser, _loads, ["--checkpoint", "a", "--trust_checkpoint", "true"])[1]["trusted"] is True
    # The old spelling still works, with a deprecation warning naming the new one.
    with pytest.warns(DeprecationWarning, match="--trust_checkpoint"):
        assert parse_kwargs(parser, _loads, ["--checkpoint", "a", "--trusted", "true"])[1]["trusted"] is True


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_import_controlnet_refusal_names_the_flag_it_accepts(tmp_path: Path, capsys) -> None:
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "x": _Payload()}, crafted)
    config = tmp_path / "cldm.yaml"
    unet = {"in_channels": 4, "model_channels": 32, "hint_channels": 1, "context_dim": 32}
    config.write_text(yaml.safe_dump({"model": {"params": {"control_stage_config": {"params": unet}}}}))
    args = ["import_controlnet", "--checkpoint", str(crafted), "--original_config", str(config), "--out", "o"]
    block = _fails(args, capsys)
    assert "--trust_checkpoint" in block[0] and str(crafted) in block[0]


def test_a_fit_runs_config_is_read_by_every_command_that_reads_one(tmp_path: Path, monkeypatch, capsys) -> None:
    """sml_stats and calibrate read ``<run>/config.yaml`` past the keys only ``fit`` knows (one shared list)."""
    from synthrel_lightning.commands import calibrate, sml_stats
    from synthrel_lightning.commands._parsing import FIT_ONLY_KEYS

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "demo", "--print_config"])
    text = capsys.readouterr().out
    config = yaml.safe_load(text)
    assert set(config) - {"model", "data"} <= set(FIT_ONLY_KEYS), set(config) - set(FIT_ONLY_KEYS)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    sml_stats.build_parser().parse_args(["--config", str(path), "--ckpt_path", "last.ckpt"])
    calibrate.build_parser().parse_args(["--config", str(path), "--ckpt_path", "last.ckpt"])


def test_a_folder_named_demo_does_not_shadow_the_demo_config(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # e.g. the demo's own output folder
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "demo", "--print_config"])
    assert info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["data"]["class_path"].endswith("DemoDataModule")
