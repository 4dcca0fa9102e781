"""`generate`: the predict loop that fills an outlier bank, end to end on real frames and a tiny saved pipeline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.utils.data import Dataset

from synthrel_lightning.atomic import create_temp
from synthrel_lightning.cli import main as cli_main
from synthrel_lightning.labels import OOD_ID, TRAIN_NAME_TO_ID
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.generate import WorkItemDataset, eval_paths, generate
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.vocabulary import resolve_vocabulary
from synthrel_lightning.testing import TinyInpaintingEngine, save_tiny_pipeline

STEM = "frankfurt_000000_000294"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd-inpaint-tiny")


@pytest.fixture(scope="module")
def two_frames(cityscapes_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Cityscapes root with the real frame and its mirror image (a second real frame)."""
    root = tmp_path_factory.mktemp("cs")
    for sub, suffix in (("leftImg8bit", "leftImg8bit"), ("gtFine", "gtFine_labelIds")):
        src = cityscapes_mini / sub / "val/frankfurt" / f"{STEM}_{suffix}.png"
        dst = root / sub / "val/frankfurt"
        dst.mkdir(parents=True)
        shutil.copy(src, dst / f"{STEM}_{suffix}.png")
        Image.fromarray(np.asarray(Image.open(src))[:, ::-1].copy()).save(dst / f"frankfurt_000000_000295_{suffix}.png")
    return root


def write_config(path: Path, bank: Path, frames: Path, tiny: Path, **extra) -> Path:
    cfg = {
        "bank": str(bank),
        "source": {
            "class_path": "synthrel_lightning.data.cityscapes.CityscapesDataset",
            "init_args": {"root": str(frames), "split": "val"},
        },
        "engine": {
            "model_id": str(tiny),
            "device": "cpu",
            "dtype": "float32",
            "num_inference_steps": 2,
            "resolution": 64,
            "mask_method": "changed",
        },
        "vocabulary": ["elephant", "lion", "arcade machine"],
        "controls": ["car"],
        "objects_per_frame": 2,
        "seed": 3,
        "batch_size": 2,
        "accelerator": "cpu",
        "devices": 1,
        "progress": False,
    }
    cfg.update(extra)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(capsys, *args: str) -> dict:
    """Run `python -m synthrel_lightning generate ... --json true` in-process; the JSON summary."""
    cli_main(["generate", *args, "--json", "true"])
    return json.loads(capsys.readouterr().out)


def bank_content(root: Path) -> dict[str, np.ndarray]:
    bank = OutlierBank(root, mode="r")
    return {k: e.rgb for k, e in bank.iter_entries()}


def test_generate_end_to_end_with_eval_frames(tmp_path: Path, two_frames: Path, tiny_folder: Path, capsys) -> None:
    bank_root, eval_dir = tmp_path / "bank", tmp_path / "eval"
    cfg = write_config(tmp_path / "gen.yaml", bank_root, two_frames, tiny_folder, write="both", eval_dir=str(eval_dir))
    cli_main(["generate", "--config", str(cfg), "--json", "true"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert (summary["done"], summary["skipped"], summary["failed"], summary["total"]) == (4, 0, 0, 4)
    assert summary["bank"] == str(bank_root) and summary["eval_dir"] == str(eval_dir) and summary["bank_entries"] == 8
    # The human report says what was written where.
    assert "4 done" in err and f"outlier bank: {bank_root} (8 entries)" in err and f"{eval_dir}/images" in err
    bank = OutlierBank(bank_root, mode="r")
    entries = dict(bank.iter_entries())
    objects = [e for e in entries.values() if e.kind == "object"]
    frames = [e for e in entries.values() if e.kind == "frame"]
    assert len(objects) == 4 and len(frames) == 4
    for e in objects:
        assert e.label_value in (OOD_ID, TRAIN_NAME_TO_ID["car"]) and e.model == str(tiny_folder)
        assert e.rgb.shape[:2] == e.alpha.shape and e.alpha.max() > 0
        assert e.prompt.startswith("A photo of a")
    for e in frames:
        assert e.rgb.shape == (128, 256, 3) and e.label.shape == (128, 256)
        assert (e.label == e.label_value).sum() >= (e.alpha > 0).sum() > 0
    images = sorted((eval_dir / "images").glob("*.png"))
    assert len(images) == 4
    ood = np.asarray(Image.open(eval_dir / "labels" / f"{images[0].stem}_ood.png"))
    lbl = np.asarray(Image.open(eval_dir / "labels" / f"{images[0].stem}_labelTrainIds.png"))
    assert set(np.unique(ood)) <= {0, 1, 255} and ((lbl == OOD_ID) == (ood == 1)).all()
    # Resume checks every output: an item whose evaluation PNG is missing is redone, the others are not.
    lost = eval_dir / "labels" / f"{images[1].stem}_ood.png"
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (eval_dir / "images").glob("*.png") if p != images[1]}
    again = run_cli(capsys, "--config", str(cfg))
    assert (again["done"], again["skipped"]) == (1, 3) and lost.is_file()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


def test_interrupted_run_resumes_and_output_is_deterministic(
    tmp_path: Path, two_frames: Path, tiny_folder: Path, capsys
) -> None:
    bank_a = tmp_path / "a"
    cfg = write_config(tmp_path / "a.yaml", bank_a, two_frames, tiny_folder)
    # An interrupted run: only the first batch (2 of 4 items) gets done.
    first_run = run_cli(capsys, "--config", str(cfg), "--limit_predict_batches", "1")
    assert (first_run["done"], first_run["pending"]) == (2, 2)
    first = {p: p.stat().st_mtime_ns for p in bank_a.glob("*/*.entry")}
    assert len(first) == 2
    second = run_cli(capsys, "--config", str(cfg))
    assert (second["skipped"], second["done"], second["pending"]) == (2, 2, 0)
    assert {p: p.stat().st_mtime_ns for p in first} == first  # finished items were not redone
    assert run_cli(capsys, "--config", str(cfg))["skipped"] == 4
    # A second bank from the same configuration in one go holds the same entries.
    bank_b = tmp_path / "b"
    run_cli(capsys, "--config", str(write_config(tmp_path / "b.yaml", bank_b, two_frames, tiny_folder)))
    a, b = bank_content(bank_a), bank_content(bank_b)
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        assert np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1  # batch composition: float rounding only
    # Another seed gives other objects/boxes.
    bank_c = tmp_path / "c"
    run_cli(capsys, "--config", str(write_config(tmp_path / "c.yaml", bank_c, two_frames, tiny_folder, seed=4)))
    assert not set(bank_content(bank_c)) & set(a)


def test_work_items_are_keyed_by_item_not_by_rank(two_frames: Path) -> None:
    from torch.utils.data import DistributedSampler

    from synthrel_lightning.data.cityscapes import CityscapesDataset

    src = CityscapesDataset(two_frames, split="val")
    vocab = resolve_vocabulary(["elephant", "lion", "sofa", "zebra"])
    ds = WorkItemDataset(src, vocab, PlacementSampler(), seed=0, objects_per_frame=3)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 6 and len({it.key for it in items}) == 6 and len({it.seed for it in items}) == 6
    assert len({it.box for it in items}) > 1 and all(type(it.box) is Box for it in items)
    again = WorkItemDataset(src, vocab, PlacementSampler(), seed=0, objects_per_frame=3)
    assert [(it.key, it.box, it.object, it.seed) for it in items] == [
        (it.key, it.box, it.object, it.seed) for it in (again[i] for i in range(len(again)))
    ]
    # Ranks get disjoint shards that together cover every item.
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(6))
    # Items already done are left out.
    done = {items[0].key, items[4].key}
    rest = WorkItemDataset(src, vocab, PlacementSampler(), seed=0, objects_per_frame=3, is_done=done.__contains__)
    assert len(rest) == 4 and rest.total == 6 and done.isdisjoint(rest[i].key for i in range(4))


def test_inpainting_source_feeds_the_background_producer(tmp_path: Path, two_frames: Path, tiny_folder: Path) -> None:
    from synthrel_lightning.synthesis.sources import ProducerSpec, fill_bank

    spec = ProducerSpec(
        "synthrel_lightning.synthesis.sources.InpaintingSource",
        {
            "frames": {
                "class_path": "synthrel_lightning.data.CityscapesDataset",
                "init_args": {"root": str(two_frames), "split": "val"},
            },
            "vocabulary": ["lion"],
            "engine": {"model_id": str(tiny_folder), "dtype": "float32", "num_inference_steps": 2, "resolution": 64},
        },
    )
    status = fill_bank(spec, tmp_path / "bank", n=2, seed=0, namespace="refresh", device="cpu")
    assert status.produced == 2 and status.fatal is None, status
    entries = [e for _, e in OutlierBank(tmp_path / "bank", mode="r").iter_entries()]
    assert all(e.name == "lion" and e.label_value == OOD_ID and e.prompt == "A photo of a lion" for e in entries)


class FlakyFrames(Dataset):
    """Real frames, one of which cannot be read (as a truncated PNG would fail), under names that try to escape."""

    def __init__(self, root: Path, names: list[str], broken: int) -> None:
        from synthrel_lightning.data.cityscapes import CityscapesDataset

        self.inner = CityscapesDataset(root, split="val")
        self.names, self.broken = names, broken

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        if i == self.broken:
            raise OSError(f"image file is truncated ({self.names[i]})")
        return dict(self.inner[i % len(self.inner)], name=self.names[i])


class LionAllergicEngine(TinyInpaintingEngine):
    """The tiny engine, whose pipeline raises whenever a lion is asked for (a deterministic per-item fault)."""

    def pipeline_call(self, **kwargs):
        if any("lion" in p for p in kwargs["prompt"]):
            raise RuntimeError("CUDA out of memory (lion)")
        return super().pipeline_call(**kwargs)


def test_per_item_faults_are_retried_counted_and_named(tmp_path: Path, two_frames: Path, capsys) -> None:
    names = ["../../escaped", "/etc/absolute", "ok_frame"]
    engine = LionAllergicEngine()
    bank, eval_dir = tmp_path / "out" / "bank", tmp_path / "out" / "eval"
    summary = generate(
        str(bank),
        FlakyFrames(two_frames, names, broken=2),
        engine=engine,
        vocabulary=["lion", "zebra"],
        objects_per_frame=3,
        seed=0,
        write="both",
        eval_dir=str(eval_dir),
        batch_size=3,
        max_item_retries=1,
        accelerator="cpu",
        devices=1,
        progress=False,
    )
    vocab = resolve_vocabulary(["lion", "zebra"])
    ds = WorkItemDataset(
        FlakyFrames(two_frames, names, broken=2), vocab, PlacementSampler(), seed=0, objects_per_frame=3
    )
    lions = [it for it in (ds[i] for i in range(6)) if it.object.name == "lion"]
    assert lions and len(lions) < 6  # both kinds of items exist with this seed
    # Every lion failed after 1 + 1 tries; the unreadable frame's 3 items failed; the others were written.
    assert summary.failed == len(lions) + 3 and summary.done == 6 - len(lions)
    named = "\n".join(summary.failed_items)
    assert all(f"{it.title}: RuntimeError: CUDA out of memory (lion)" in named for it in lions)
    assert "#2#0: OSError: image file is truncated (ok_frame)" in named
    assert engine.stats["calls"] >= 1 + 2 * len(lions)
    assert "failed items:" in summary.report() and lions[0].title in summary.report()
    # Frame names with '..' or absolute paths never lead a write outside the output folder.
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all((tmp_path / "out") in p.parents for p in written)
    assert not Path("/etc/absolute").exists()
    for it in (ds[i] for i in range(6)):
        if it.error is None and it.object.name != "lion":
            assert all(p.is_file() for p in eval_paths(eval_dir, it.key))


def test_temp_files_of_killed_writers_are_cleaned_at_start(
    tmp_path: Path, two_frames: Path, tiny_folder: Path, capsys
) -> None:
    bank, eval_dir = tmp_path / "bank", tmp_path / "eval"
    OutlierBank(bank)
    shard = bank / "00a"
    shard.mkdir()
    dead = shard / f".tmp-{socket.gethostname()}-999999999-deadbeef"  # a writer whose process is gone
    dead.write_bytes(b"half an entry")
    (eval_dir / "images").mkdir(parents=True)
    stale_png = eval_dir / "images" / ".tmp-abc.x1y2.png"  # no owner in its name, and two hours old
    stale_png.write_bytes(b"half a png")
    os.utime(stale_png, (time.time() - 7200, time.time() - 7200))
    # Fresh files of writers still at work: another process here (this one) and a process on another host.
    live_here = create_temp(eval_dir / "images", "frame", ".png")
    live_elsewhere = eval_dir / "labels" / ".tmp-0badc0de-12345-0123456789ab.frame.png"
    live_elsewhere.parent.mkdir(parents=True)
    live_elsewhere.write_bytes(b"being written on another node")
    cfg = write_config(tmp_path / "g.yaml", bank, two_frames, tiny_folder, eval_dir=str(eval_dir), max_frames=1)
    summary = run_cli(capsys, "--config", str(cfg), "--objects_per_frame", "1")
    assert summary["temp_files_removed"] == 2 and not dead.exists() and not stale_png.exists()
    assert live_here.exists() and live_elsewhere.exists()
    assert summary["done"] == 1 and OutlierBank(bank).temp_files() == []


class SelfTerminatingEngine(TinyInpaintingEngine):
    """The tiny engine; its first pipeline call sends SIGTERM to this very process (a scheduler stopping the job)."""

    def pipeline_call(self, **kwargs):
        if self.stats["calls"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().pipeline_call(**kwargs)


def test_sigterm_stops_after_the_current_batch_in_process(tmp_path: Path, two_frames: Path) -> None:
    from synthrel_lightning.data.cityscapes import CityscapesDataset

    before = signal.getsignal(signal.SIGTERM)
    kwargs = dict(vocabulary=["zebra"], objects_per_frame=3, batch_size=1, accelerator="cpu", devices=1, progress=False)
    source = CityscapesDataset(two_frames, split="val")
    summary = generate(str(tmp_path / "bank"), source, engine=SelfTerminatingEngine(), **kwargs)
    assert summary.interrupted == "SIGTERM" and summary.done == 1 and summary.pending == 5
    assert "stopped early by SIGTERM" in summary.report() and "rerun the same command to resume" in summary.report()
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    assert len(OutlierBank(tmp_path / "bank", mode="r")) == 1
    again = generate(str(tmp_path / "bank"), source, engine=TinyInpaintingEngine(), **kwargs)
    assert (again.skipped, again.done, again.interrupted) == (1, 5, None)


def test_counts_are_gathered_over_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp
    from _gather_worker import gather_worker

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    out = tmp_path / "merged.json"
    mp.spawn(gather_worker, args=(3, port, str(out)), nprocs=3, join=True)
    merged = json.loads(out.read_text())
    assert merged["counts"] == {"done": 6, "failed": 3}
    assert merged["failed_items"] == ["frame1#0: boom", "frame2#0: boom", "frame2#0: boom"]


def test_an_evaluation_png_that_cannot_be_written_fails_the_item_and_a_rerun_redoes_it(
    tmp_path: Path, two_frames: Path
) -> None:
    from synthrel_lightning.data.cityscapes import CityscapesDataset

    bank, eval_dir = tmp_path / "bank", tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "labels").write_text("a file where the labels folder should be")
    kwargs = dict(
        vocabulary=["zebra"],
        objects_per_frame=2,
        max_frames=1,
        eval_dir=str(eval_dir),
        accelerator="cpu",
        devices=1,
        progress=False,
    )
    source = CityscapesDataset(two_frames, split="val")
    first = generate(str(bank), source, engine=TinyInpaintingEngine(mask_method="box"), **kwargs)
    assert (first.done, first.failed) == (0, 2) and all("write failed" in f for f in first.failed_items)
    assert first.bank_entries == 2  # the bank entries were committed before the PNGs failed
    (eval_dir / "labels").unlink()
    second = generate(str(bank), source, engine=TinyInpaintingEngine(mask_method="box"), **kwargs)
    assert (second.skipped, second.done, second.failed) == (0, 2, 0)
    assert len(list((eval_dir / "labels").glob("*_ood.png"))) == 2


def test_resume_redoes_items_whose_outputs_are_damaged(
    tmp_path: Path, two_frames: Path, tiny_folder: Path, capsys
) -> None:
    bank, eval_dir = tmp_path / "bank", tmp_path / "eval"
    cfg = write_config(tmp_path / "g.yaml", bank, two_frames, tiny_folder, eval_dir=str(eval_dir), max_frames=1)
    first = run_cli(capsys, "--config", str(cfg), "--objects_per_frame", "3")
    keys = sorted(OutlierBank(bank).keys())
    assert first["done"] == 3 and len(keys) == 3
    image_png = eval_paths(eval_dir, keys[0])[0]
    image_png.write_bytes(image_png.read_bytes()[: image_png.stat().st_size // 2])  # a truncated PNG
    entry = OutlierBank(bank).path(keys[1])
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit in a bank entry
    entry.write_bytes(bytes(data))
    again = run_cli(capsys, "--config", str(cfg), "--objects_per_frame", "3")
    assert again["skipped"] == 1 and again["done"] == 2
    assert OutlierBank(bank).verify() == []
    for key in keys:
        for path in eval_paths(eval_dir, key):
            with Image.open(path) as im:
                im.load()
