"""``python -m synthrel_lightning share_set``: export, export_bank, import_bank and push from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthrel_lightning.cli import main
from synthrel_lightning.commands.share_set import ACTIONS
from synthrel_lightning.data import RoadAnomalyDataset
from synthrel_lightning.sharing import HubFramesDataset
from synthrel_lightning.synthesis import OutlierBank, OutlierEntry


def test_export_command_round_trip(road_anomaly_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ra"
    args = ["share_set", "export", "--dataset", "synthrel_lightning.data.RoadAnomalyDataset"]
    args += ["--dataset.root", str(road_anomaly_root), "--dataset.max_samples", "2", "--out", str(out)]
    args += ["--split", "validation", "--provenance", '{"protocol": "Road Anomaly, all frames"}']
    main(args)
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and summary["splits"]["validation"]["num_rows"] == 2
    assert summary["provenance"]["protocol"] == "Road Anomaly, all frames"
    original, shared = RoadAnomalyDataset(road_anomaly_root, max_samples=2), HubFramesDataset(out, split="validation")
    for i in range(2):
        assert np.array_equal(original[i]["image"], shared[i]["image"])
        assert np.array_equal(original[i]["ood"], shared[i]["ood"])

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: share_set export: output folder {out} already exists and is not empty")


def test_bank_commands_round_trip(tmp_path: Path, capsys) -> None:
    bank = OutlierBank(tmp_path / "bank")
    rng = np.random.default_rng(0)
    for i in range(3):
        rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        bank.add(OutlierEntry(rgb=rgb, alpha=rng.integers(0, 256, (6, 7), dtype=np.uint8), name=f"o{i}"), key=f"k{i}")
    main(["share_set", "export_bank", "--bank", str(bank.root), "--out", str(tmp_path / "shared")])
    assert json.loads(capsys.readouterr().out)["counts"]["train"]["entries"] == 3
    main(["share_set", "import_bank", "--source", str(tmp_path / "shared"), "--bank", str(tmp_path / "copy")])
    assert json.loads(capsys.readouterr().out)["added"] == 3
    copy = OutlierBank(tmp_path / "copy", mode="r")
    for key in bank.keys():
        assert np.array_equal(copy.get(key).rgb, bank.get(key).rgb) and copy.get(key).name == bank.get(key).name


def test_bad_actions_and_sources_exit_with_status_2(tmp_path: Path, capsys) -> None:
    main(["share_set"])
    assert "export_bank" in capsys.readouterr().out
    for args, cause in (
        (["share_set", "publish"], "unknown action 'publish'"),
        (["share_set", "push", "--folder", str(tmp_path), "--repo_id", "me/x"], "is not a shared set"),
        (
            ["share_set", "import_bank", "--source", str(tmp_path / "nowhere"), "--bank", str(tmp_path / "b")],
            "neither a folder with Parquet shards nor a Hugging Face Hub dataset id",
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert cause in capsys.readouterr().err
    assert not (tmp_path / "b").exists(), "a failed import must not create the bank"


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "sharing.md"


def test_the_guide_python_blocks_run(tmp_path: Path, monkeypatch) -> None:
    import re

    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        if "load_dataset" in block:  # keep the datasets cache inside the test folder
            block = block.replace('load_dataset("shared/demo")', 'load_dataset("shared/demo", cache_dir="hf-cache")')
        exec(compile(block, f"{GUIDE.name} block {i}", "exec"), {})
    assert (tmp_path / "shared" / "demo" / "README.md").is_file()


def test_the_guide_command_lines_use_real_options(capsys) -> None:
    import re
    import shlex

    main(["share_set", "--help"])
    options = set(re.findall(r"--([\w.\-]+)", capsys.readouterr().out))
    block = re.search(r"```bash\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S).group(1)
    lines = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert len(lines) == 5
    for tokens in lines:
        assert tokens[:4] == ["python", "-m", "synthrel_lightning", "share_set"] and tokens[4] in ACTIONS
        used = {t[2:].split(".")[0] for t in tokens if t.startswith("--")}
        assert used <= options, used - options
