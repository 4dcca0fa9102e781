"""`generate` stops cleanly on SIGTERM: the current item is finished, nothing half-written remains, a rerun resumes.

The in-process twin (a real signal delivered mid-run) is in test_synthesis_generate.py; this one runs the
command as a user would, in a subprocess killed from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.generate import eval_paths

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_sigterm_stops_after_the_current_item_and_a_rerun_resumes(tmp_path: Path, cityscapes_mini: Path) -> None:
    bank, eval_dir = tmp_path / "bank", tmp_path / "eval"
    cfg = tmp_path / "gen.yaml"
    items = 10
    cfg.write_text(
        yaml.safe_dump(
            {
                "bank": str(bank),
                "eval_dir": str(eval_dir),
                "source": {
                    "class_path": "synthrel_lightning.data.CityscapesDataset",
                    "init_args": {"root": str(cityscapes_mini), "split": "val"},
                },
                "engine": {"class_path": "synthrel_lightning.testing.TinyInpaintingEngine"},
                "vocabulary": ["lion", "zebra"],
                "objects_per_frame": items,
                "batch_size": 1,
                "accelerator": "cpu",
                "devices": 1,
                "progress": False,
            }
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "synthrel_lightning", "generate", "--config", str(cfg), "--json", "true"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (bank.is_dir() and any(bank.glob("*/*.entry"))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "generate wrote nothing in 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    summary = json.loads(out)
    assert summary["interrupted"] == "SIGTERM" and "stopped early by SIGTERM" in err
    assert 1 <= summary["done"] < items and summary["failed"] == 0
    # Every item written is complete (bank entry and its evaluation PNGs); no temp file is left behind.
    keys = OutlierBank(bank, mode="r").keys()
    assert len(keys) == summary["done"] == summary["bank_entries"]
    assert all(p.is_file() for k in keys for p in eval_paths(eval_dir, k))
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    # A rerun resumes: the finished items are skipped, the rest done.
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = json.loads(rerun.stdout)
    assert final["skipped"] == summary["done"] and final["skipped"] + final["done"] + final["rejected"] == items
    assert final["interrupted"] is None


def test_the_default_test_selection_runs_this_guard() -> None:
    """The exit status after SIGTERM is checked only above: the default pytest options must not deselect it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "not slow" not in options.get("addopts", "")
