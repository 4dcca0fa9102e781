"""`generate` on two processes fails cleanly when one is lost: a one-line error naming what the survivor wrote.

Real processes (the command as a user runs it, two CPU processes joined by gloo, as Lightning's own
launcher or torchrun would start them), real tiny random-weight diffusers pipelines, real files on disk;
the fast checks below build real Trainers, a real TCPStore and real errors.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from synthrel_lightning.predict_loop import (
    ProcessGroupLost,
    expected_processes,
    is_process_group_failure,
    peers_lost_as,
    predict_trainer,
)
from synthrel_lightning.synthesis.bank import OutlierBank
from tests._process_group import error_line, finish, free_port, launch_rank, lost_peers_line_of_a_lone_process

ITEMS = 8  # 4 per process


def _config(tmp_path: Path, cityscapes_mini: Path) -> Path:
    cfg = tmp_path / "gen.yaml"
    options = {
        "bank": str(tmp_path / "bank"),
        "source": {
            "class_path": "synthrel_lightning.data.CityscapesDataset",
            "init_args": {"root": str(cityscapes_mini), "split": "val"},
        },
        "engine": {"class_path": "synthrel_lightning.testing.TinyInpaintingEngine"},
        "vocabulary": ["lion", "zebra"],
        "objects_per_frame": ITEMS,
        "batch_size": 1,
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "progress": False,
    }
    cfg.write_text(yaml.safe_dump(options))
    return cfg


def _launch(rank: int, port: int, cfg: Path, *extra: str) -> subprocess.Popen:
    return launch_rank(rank, port, ["generate", "--config", str(cfg), "--json", "true", *extra])


def _counts(line: str) -> dict[str, int]:
    wrote = re.search(r"This process wrote ([^;]*);", line)
    assert wrote, line
    return {what: int(n) for n, what in re.findall(r"(\d+) (\w+)", wrote.group(1))}


@pytest.mark.slow
def test_a_killed_process_leaves_the_survivor_a_clear_error_and_a_rerun_completes_the_set(
    tmp_path: Path, cityscapes_mini: Path
) -> None:
    cfg, bank = _config(tmp_path, cityscapes_mini), tmp_path / "bank"
    port = free_port()
    survivor, victim = _launch(0, port, cfg), _launch(1, port, cfg)
    try:
        deadline = time.monotonic() + 300
        while not (bank.is_dir() and any(bank.glob("*/*.entry"))):
            assert survivor.poll() is None and victim.poll() is None, (survivor.communicate(), victim.communicate())
            assert time.monotonic() < deadline, "generate wrote nothing in 300 s"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = finish(survivor, timeout=120)
    finally:
        for proc in (survivor, victim):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert survivor.returncode == 2, err[-3000:]
    assert time.monotonic() - killed < 120
    line = error_line(err)
    # The cause first, in one line: who lost whom and why, what this process wrote, how to resume.
    assert line.startswith("error: generate: process 0 of 2 lost the other processes of the run"), line
    assert "Connection closed by peer" in line or "Connection reset by peer" in line, line
    assert "every completed item is on disk" in line and line.endswith("rerun the same command to resume."), line
    assert "Traceback" not in err, err[-3000:]
    counts = _counts(line)
    assert set(counts) == {"done", "failed", "rejected", "unplaceable"}, line
    # The survivor worked through its whole share (no collective step in the middle of the loop).
    assert sum(counts.values()) == ITEMS // 2 and counts["failed"] == 0, line
    # What both wrote is intact: every entry reads back; the killed process left its share unfinished.
    written = OutlierBank(bank, mode="r")
    assert written.verify() == []
    assert counts["done"] <= len(written) < ITEMS - counts["rejected"]
    # Rerunning the same command resumes: the complete items are skipped, the others done, none twice.
    port = free_port()
    reruns = [_launch(rank, port, cfg) for rank in (0, 1)]
    (out, err0), (_, err1) = [finish(proc, timeout=300) for proc in reruns]
    assert [proc.returncode for proc in reruns] == [0, 0], (err0[-3000:], err1[-3000:])
    final = json.loads(out)
    assert final["skipped"] == len(written) and final["failed"] == 0 and final["pending"] == 0
    assert final["skipped"] + final["done"] + final["rejected"] == ITEMS
    assert final["bank_entries"] == len(OutlierBank(bank, mode="r").keys()) == final["skipped"] + final["done"]
    assert OutlierBank(bank, mode="r").verify() == []
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.slow
def test_a_process_that_never_joins_fails_the_other_after_the_timeout(tmp_path: Path, cityscapes_mini: Path) -> None:
    cfg = _config(tmp_path, cityscapes_mini)
    line = lost_peers_line_of_a_lone_process(["generate", "--config", str(cfg), "--json", "true"], "generate")
    assert _counts(line) == {"done": 0, "rejected": 0, "failed": 0, "unplaceable": 0}, line


def test_the_timeout_reaches_the_ddp_strategy_only_where_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    two = predict_trainer("cpu", 2, "auto", process_group_timeout_s=7)
    assert isinstance(two.strategy, DDPStrategy) and two.strategy._timeout == timedelta(seconds=7)
    spawn = predict_trainer("cpu", 2, "ddp_spawn", process_group_timeout_s=7).strategy
    assert isinstance(spawn, DDPStrategy) and spawn._start_method == "spawn" and spawn._timeout == timedelta(seconds=7)
    assert isinstance(predict_trainer("cpu", 1, "auto", process_group_timeout_s=7).strategy, SingleDeviceStrategy)
    default = predict_trainer("cpu", 2, "ddp").strategy
    assert isinstance(default, DDPStrategy) and default._timeout == timedelta(minutes=30)  # Lightning's own
    with caplog.at_level(logging.WARNING, logger="synthrel_lightning.predict_loop"):
        predict_trainer("cpu", 1, "single_device", process_group_timeout_s=7)
    assert "strategy 'single_device' keeps its own process-group timeout" in caplog.text
    with pytest.raises(ValueError, match="process_group_timeout_s must be > 0"):
        predict_trainer("cpu", 2, "ddp", process_group_timeout_s=0)


@pytest.mark.parametrize(
    ("accelerator", "devices", "num_nodes", "n"),
    [("cpu", 2, 1, 2), ("cpu", "2", 1, 2), ("gpu", [0, 1, 3], 1, 3), ("gpu", "0,1", 2, 4), ("cpu", "auto", 1, 1)],
)
def test_expected_processes(accelerator: str, devices, num_nodes: int, n: int) -> None:
    assert expected_processes(accelerator, devices, num_nodes) == n


def test_a_store_timeout_is_a_process_group_failure_and_other_errors_pass_through() -> None:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", free_port(), 1, True, timeout=timedelta(seconds=0.3))
    with pytest.raises(ProcessGroupLost, match="lost: DistStoreError") as lost:
        with peers_lost_as(lambda err: f"lost: {type(err).__name__}"):
            store.get("a key no process ever sets")
    assert isinstance(lost.value, ConnectionError) and is_process_group_failure(lost.value.__cause__)
    for error in (RuntimeError("CUDA out of memory"), ValueError("bad vocabulary"), KeyError("x")):
        with pytest.raises(type(error)) as raised:
            with peers_lost_as(lambda err: "lost"):
                raise error
        assert raised.value is error and not is_process_group_failure(error)
