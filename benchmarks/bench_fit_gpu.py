r"""End-to-end fit throughput: the Cityscapes SegFormer recipe fed from memory vs from the DataModule.

The model is the shape of ``recipes/cityscapes_segformer.yaml``: SegFormer-B0 (random weights,
built from a ``SegformerConfig``: nothing is downloaded), cross-entropy + sigmoid-sum
rejection, the ``sigmoid_sum`` score, AdamW + cosine schedule, ``compile_losses`` (it acts on
CUDA only; ``--no-compile`` turns it off) and bf16-mixed precision on a GPU. It trains in a
real Lightning ``Trainer`` on procedural street frames in the Cityscapes layout
(``leftImg8bit``/``gtFine`` PNGs written to a temp folder: a few unique frames, hard-linked
up to the number of frames a run reads, so every read still decodes a PNG) and a procedural
outlier bank. Three data sources, with the same model (compiled loss terms in every mode)
and the same Trainer set-up:

* ``a``: batches from memory: the loader's own batches, collected once, kept on the device and
  served in turn (through the DataModule's batch-transfer hooks, as the loader's are);
* ``b``: ``CityscapesOODDataModule`` without outliers;
* ``c``: ``CityscapesOODDataModule`` with banked outliers mixed in at probability ``--probability``.

Each mode fits ``--warmup`` untimed steps then ``--steps`` timed ones; a callback stamps
every ``on_train_batch_start``/``on_train_batch_end`` (synchronising CUDA at the end of a
step), so images/s = images of the timed steps / (end of the last step - end of the last
warm-up step), and the time from the end of one step to the start of the next is time the
accelerator waited: for the next batch from the loader, for its transfer to be queued, and
for Lightning's own per-step work, which mode ``a`` measures alone. Workers deliver batches
in waves (one batch per worker), so the preset step counts are rounded up to a multiple of
``--workers``. A first untimed fit on
memory batches compiles the loss and warms the allocator. Modes run in interleaved rounds;
the table gives medians and the ratios to mode ``a``. Options of the DataModule's
constructor can be set with ``--data-option key=value`` (YAML values); they apply to every
mode (``a``'s batches come from the same DataModule). On a CPU the training process uses one
thread (``--threads``) and the loader workers compete with it for the cores: the numbers
there check the script, not the data pipeline. ``benchmarks/device_check.sh`` runs the
full size on a GPU machine. From the repository root::

    PYTHONPATH=. python benchmarks/bench_fit_gpu.py --device cpu --size small
    PYTHONPATH=. python benchmarks/bench_fit_gpu.py --device cuda --size full --workers 14 \
        --json benchmarks/results/fit_gpu/bench_fit_gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.labels import OOD_ID

MODES: dict[str, str] = {
    "a": "batches from memory",
    "b": "DataModule, no outliers",
    "c": "DataModule, banked outliers",
}

SEGFORMER_B0: dict[str, Any] = {
    "depths": [2, 2, 2, 2],
    "hidden_sizes": [32, 64, 160, 256],
    "num_attention_heads": [1, 2, 5, 8],
    "sr_ratios": [8, 4, 2, 1],
    "decoder_hidden_size": 256,
}
"""``SegformerConfig`` values of SegFormer-B0 (nvidia/mit-b0, the recipe's checkpoint family)."""


@dataclasses.dataclass
class FitBenchConfig:
    """Everything one benchmark run depends on (the presets fill it from ``--size``)."""

    device: str = "cpu"
    frame_size: tuple[int, int] = (256, 512)
    crop_size: tuple[int, int] = (128, 256)
    scale_range: tuple[float, float] = (0.5, 2.0)
    batch_size: int = 2
    workers: int = 2
    steps: int = 10
    warmup: int = 3
    rounds: int = 1
    modes: tuple[str, ...] = ("a", "b", "c")
    compile_losses: bool = True
    precision: str | None = None
    unique_frames: int = 8
    bank_size: int = 32
    object_size: tuple[int, int] = (24, 96)
    probability: float = 0.5
    memory_batches: int = 4
    data_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    threads: int | None = None

    def resolved_threads(self) -> int | None:
        """Intra-op threads of the training process: 1 on a CPU (the loader workers need the cores), else torch's."""
        if self.threads is not None:
            return self.threads
        return None if self.device.startswith("cuda") else 1

    def resolved_precision(self) -> str:
        """bf16-mixed on CUDA (the recipe's), 32-true elsewhere, unless set."""
        if self.precision is not None:
            return self.precision
        return "bf16-mixed" if self.device.startswith("cuda") else "32-true"


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(
        frame_size=(256, 512), crop_size=(128, 256), batch_size=2, workers=2, steps=6, warmup=2, rounds=2,
        unique_frames=8, bank_size=32, object_size=(24, 96), memory_batches=4,
    ),
    "full": dict(
        frame_size=(1024, 2048), crop_size=(512, 1024), batch_size=8, workers=14, steps=112, warmup=14, rounds=3,
        unique_frames=48, bank_size=256, object_size=(96, 384), memory_batches=8,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------- data on disk
def _write_frame(image_path: Path, label_path: Path, size: tuple[int, int], seed: int) -> None:
    """One street-like frame (sky, buildings, vegetation, cars, road, sidewalk, noise) and its label ids."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    horizon = int(h * rng.uniform(0.4, 0.55))
    label = np.full((h, w), 23, np.uint8)  # sky
    for lid, count in ((11, 8), (21, 4)):  # building, vegetation
        for _ in range(count):
            x0 = int(rng.integers(0, max(1, w - w // 10)))
            top = int(horizon * rng.uniform(0.2, 0.7))
            label[top:horizon, x0 : x0 + int(rng.integers(w // 14, w // 4))] = lid
    label[horizon:] = 7  # road
    label[horizon:, : w // 6] = 8  # sidewalk
    for _ in range(3):  # cars on the road
        cw = int(rng.integers(w // 20, w // 8))
        x0 = int(rng.integers(w // 6, w - cw))
        y1 = int(rng.integers(horizon + cw // 4, h - h // 16))
        label[max(horizon, y1 - cw // 2) : y1, x0 : x0 + cw] = 26
    label[h - max(1, h // 17) :] = 1  # ego vehicle (void)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    image = np.concatenate([90 + 100 * yy, 110 + 60 * yy, 150 - 40 * yy], -1).repeat(w, 1)
    palette = {
        23: (70, 130, 180), 11: (70, 70, 70), 21: (107, 142, 35), 7: (128, 64, 128),
        8: (244, 35, 232), 26: (0, 0, 142), 1: (0, 0, 0),
    }  # fmt: skip
    for lid, colour in palette.items():
        mask = label == lid
        image[mask] = 0.5 * image[mask] + 0.5 * np.asarray(colour, np.float32)
    image += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(image_path, compress_level=1)
    Image.fromarray(label).save(label_path, compress_level=1)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_frames(
    root: Path, size: tuple[int, int], unique: int, counts: dict[str, int], seed: int = 0, processes: int | None = None
) -> dict[str, int]:
    """Write ``unique`` procedural frames of ``size`` (H, W) and hard-link them to ``counts[split]`` frames per split.

    Layout: ``leftImg8bit/<split>/synth/synth_<i>_000019_leftImg8bit.png`` and the matching
    ``gtFine/.../_gtFine_labelIds.png`` (official label ids). Returns the counts written.
    """
    if unique < 1 or min(counts.values(), default=0) < 1:
        raise ValueError(f"write_frames: need unique >= 1 and every split count >= 1, got {unique} and {counts}")
    src_dir = root / "_unique"
    src_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(src_dir / f"{i}_image.png", src_dir / f"{i}_label.png", tuple(size), seed + i) for i in range(unique)]
    processes = processes or min(unique, os.cpu_count() or 1)
    if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.starmap(_write_frame, jobs)
    else:
        for job in jobs:
            _write_frame(*job)
    for split, n in counts.items():
        img_dir = root / "leftImg8bit" / split / "synth"
        lab_dir = root / "gtFine" / split / "synth"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"synth_{i:06d}_000019"
            image, label = jobs[i % unique][:2]
            _link_or_copy(image, img_dir / f"{stem}_leftImg8bit.png")
            _link_or_copy(label, lab_dir / f"{stem}_gtFine_labelIds.png")
    return dict(counts)


def build_bank(root: Path, n: int, object_size: tuple[int, int], seed: int = 0) -> Path:
    """An outlier bank of ``n`` procedural objects (longest side in ``object_size`` pixels)."""
    from synthrel_lightning.synthesis import OutlierBank, ProceduralObjectSource, fill_bank

    bank = OutlierBank(root)
    report = fill_bank(ProceduralObjectSource(size_range=tuple(object_size)), bank, n, seed=seed)
    if getattr(report, "fatal", None):
        raise RuntimeError(f"build_bank: filling the procedural bank at {root} failed: {report.fatal}")
    return Path(bank.root)


# ---------------------------------------------------------------------------- model and data
def build_model(config: FitBenchConfig) -> L.LightningModule:
    """The recipe's OODSegmenter with a random SegFormer-B0."""
    from synthrel_lightning.losses import CrossEntropy, SigmoidSumRejection
    from synthrel_lightning.models import HFSegformer, OODSegmenter

    torch.manual_seed(config.seed)
    return OODSegmenter(
        segmenter=HFSegformer(checkpoint=None, num_classes=19, config=dict(SEGFORMER_B0)),
        num_classes=19,
        losses=[CrossEntropy(), SigmoidSumRejection(weight=0.5)],
        ood_score="sigmoid_sum",
        compile_losses=config.compile_losses,
        optimizer=functools.partial(torch.optim.AdamW, lr=6e-5, weight_decay=0.01),
        scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=20),
        summary=False,
    )


def datamodule_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check ``--data-option`` keys against ``CityscapesOODDataModule``'s constructor."""
    from synthrel_lightning.data import CityscapesOODDataModule

    accepted = set(inspect.signature(CityscapesOODDataModule.__init__).parameters) - {"self"}
    managed = {"root", "outliers"}
    for key in options:
        if key in managed:
            raise ValueError(f"--data-option {key}: set by the benchmark itself (it owns {sorted(managed)})")
        if key not in accepted:
            raise ValueError(
                f"--data-option {key}: not a CityscapesOODDataModule argument; expected one of {sorted(accepted)}"
            )
    return dict(options)


def make_datamodule(config: FitBenchConfig, root: Path, bank: Path | None) -> L.LightningDataModule:
    """The recipe's CityscapesOODDataModule over ``root``, mixing outliers from ``bank`` when given."""
    from synthrel_lightning.data import CityscapesOODDataModule
    from synthrel_lightning.synthesis import BankSource, OutlierMixer, PlacementSampler

    outliers = None
    if bank is not None:
        outliers = OutlierMixer(
            source=BankSource(bank),
            probability=config.probability,
            num_objects=(1, 3),
            placement=PlacementSampler(drivable_ids=[0, 1], min_overlap=0.3),
            seed=0,
        )
    kwargs: dict[str, Any] = dict(
        root=root,
        outliers=outliers,
        crop_size=tuple(config.crop_size),
        scale_range=tuple(config.scale_range),
        batch_size=config.batch_size,
        eval_batch_size=2,
        num_workers=config.workers,
        seed=config.seed,
    )
    kwargs.update(datamodule_options(config.data_options))
    return CityscapesOODDataModule(**kwargs)


class _Cycle(Dataset):
    """``length`` items drawn in turn from ``items``."""

    def __init__(self, items: Sequence[Any], length: int) -> None:
        self.items, self.length = list(items), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.items[index % len(self.items)]


class MemoryDataModule(L.LightningDataModule):
    """Serves pre-collated batches (already on the device) in turn; batch hooks are those of ``source``."""

    def __init__(self, batches: Sequence[dict[str, Any]], length: int, source: L.LightningDataModule) -> None:
        super().__init__()
        self.batches, self.length, self.source = list(batches), int(length), source

    def setup(self, stage: str | None = None) -> None:
        """Attach the trainer to the source, whose batch hooks may read it."""
        self.source.trainer = self.trainer

    def train_dataloader(self) -> DataLoader:
        """The batches, in turn, ``length`` of them, collated already."""
        return DataLoader(_Cycle(self.batches, self.length), batch_size=None, shuffle=False, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The source DataModule's hook."""
        return self.source.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """The source DataModule's hook."""
        return self.source.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The source DataModule's hook."""
        return self.source.on_after_batch_transfer(batch, dataloader_idx)


def collect_batches(datamodule: L.LightningDataModule, n: int, device: torch.device) -> list[dict[str, Any]]:
    """The first ``n`` batches of the DataModule's training loader, as the loader yields them, moved to ``device``."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(move_data_to_device(batch, device))
        if len(batches) == n:
            break
    if len(batches) < n:
        raise RuntimeError(f"collect_batches: the training loader gave {len(batches)} batches, {n} wanted")
    return batches


# ---------------------------------------------------------------------------- timing
def _describe(batch: Any) -> dict[str, Any]:
    """Shape, dtype and device of each tensor of a batch dict."""
    if not isinstance(batch, dict):
        return {"type": type(batch).__name__}
    return {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), "device": v.device.type}
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
    }


class StepTimer(Callback):
    """Stamps the start and end of every training step (CUDA synchronised at the end of each)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.images: list[int] = []
        self.batch: dict[str, Any] = {}
        self._ood: torch.Tensor | None = None
        self._pixels = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Stamp the start (the previous end synchronised, so the device is idle here)."""
        if not self.starts:
            self.batch = _describe(batch)
        self.images.append(int(batch["image"].shape[0]))
        self.starts.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's OOD pixels (queued, no sync), wait for the device, then stamp the end."""
        label = batch.get("label") if isinstance(batch, dict) else None
        if isinstance(label, torch.Tensor):
            ood = (label == OOD_ID).sum()
            self._ood = ood if self._ood is None else self._ood + ood
            self._pixels += label.numel()
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.ends.append(time.perf_counter())

    def summary(self, warmup: int) -> dict[str, Any]:
        """images/s over the steps after ``warmup``, median step and wait times, the fraction of time waited.

        A timed step's cycle runs from the end of the step before it to its own end (the wait for
        its batch, then the step), so the timed span is ``warmup + 1 .. n`` whole cycles: with as many
        timed steps as a multiple of the loader's workers, batches arriving in waves (one per
        worker) do not bias the rate by where the span starts within a wave.
        """
        n = len(self.ends)
        if warmup < 1 or n <= warmup:
            raise RuntimeError(f"StepTimer: {n} steps ran; need at least 1 warm-up step ({warmup}) and a timed one")
        elapsed = self.ends[-1] - self.ends[warmup - 1]
        steps = [e - s for s, e in zip(self.starts[warmup:], self.ends[warmup:])]
        waits = [self.starts[i] - self.ends[i - 1] for i in range(warmup, n)]
        return {
            "images_per_s": sum(self.images[warmup:n]) / elapsed,
            "timed_steps": n - warmup,
            "elapsed_s": elapsed,
            "step_ms": 1000 * statistics.median(steps),
            "wait_ms": 1000 * statistics.median(waits),
            "max_wait_ms": 1000 * max(waits),
            "wait_fraction": sum(waits) / elapsed,
            "ood_pixel_fraction": float(self._ood) / self._pixels if self._ood is not None and self._pixels else None,
            "batch": self.batch,
        }


def fit_once(
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    config: FitBenchConfig,
    root: Path,
    steps: int | None = None,
) -> dict[str, Any]:
    """Fit ``warmup + steps`` steps (``config.steps`` by default) in a fresh Trainer; the :class:`StepTimer` summary."""
    steps = config.steps if steps is None else steps
    device = torch.device(config.device)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index] if device.type == "cuda" and device.index is not None else 1,
        precision=config.resolved_precision(),
        max_epochs=1,
        limit_train_batches=config.warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.summary(config.warmup)


# ---------------------------------------------------------------------------- the run
def machine_info(device: str) -> dict[str, Any]:
    """Platform, CPU, library versions and the accelerator."""
    import lightning

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_1m": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def run_benchmark(
    config: FitBenchConfig,
    workdir: str | os.PathLike[str] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write the data, fit each mode in interleaved rounds and return the record (see :func:`format_table`)."""
    unknown = [m for m in config.modes if m not in MODES]
    if unknown or not config.modes:
        raise ValueError(f"modes: expected some of {sorted(MODES)}, got {list(config.modes)}")
    if config.steps < 1 or config.warmup < 1:
        raise ValueError(f"steps and warmup must be >= 1, got steps={config.steps}, warmup={config.warmup}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {config.device!r}: CUDA is not available on this machine")
    datamodule_options(config.data_options)
    device = torch.device(config.device)
    threads = torch.get_num_threads()
    if config.resolved_threads() is not None:
        torch.set_num_threads(config.resolved_threads())
    try:
        return _run(config, device, workdir, on_round)
    finally:
        torch.set_num_threads(threads)


def _run(
    config: FitBenchConfig,
    device: torch.device,
    workdir: str | os.PathLike[str] | None,
    on_round: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    L.seed_everything(config.seed, workers=True, verbose=False)
    with tempfile.TemporaryDirectory(prefix="bench_fit_", dir=workdir) as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        per_fit = (config.warmup + config.steps + 1) * config.batch_size
        frames = write_frames(
            tmp_path / "cityscapes",
            config.frame_size,
            min(config.unique_frames, per_fit),
            {"train": per_fit, "val": 2},
            seed=config.seed,
        )
        frames_s = time.perf_counter() - t0
        bank = None
        if "c" in config.modes or "a" in config.modes:
            bank = build_bank(tmp_path / "bank", config.bank_size, config.object_size, seed=config.seed)
        bank_s = time.perf_counter() - t0 - frames_s
        root = tmp_path / "cityscapes"

        def datamodule_for(mode: str) -> L.LightningDataModule:
            return make_datamodule(config, root, bank if mode == "c" else None)

        model = build_model(config)
        # Mode a serves the loader's own batches (the mixed ones when c runs, so OOD pixels are there too).
        source = datamodule_for("c" if bank is not None else "b")
        t1 = time.perf_counter()
        batches = collect_batches(source, config.memory_batches, device)
        collect_s = time.perf_counter() - t1

        def memory() -> L.LightningDataModule:
            return MemoryDataModule(batches, config.warmup + config.steps, source)

        # Untimed: compiles the loss terms, picks kernels and fills the allocator's cache.
        t1 = time.perf_counter()
        fit_once(model, memory(), config, tmp_path, steps=1)
        first_fit_s = time.perf_counter() - t1
        rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in config.modes}
        record: dict[str, Any] = {}
        for r in range(config.rounds):
            # Alternate the order, so no mode always runs first (or right after the warm-up fit).
            for mode in config.modes if r % 2 == 0 else config.modes[::-1]:
                dm = memory() if mode == "a" else datamodule_for(mode)
                rounds[mode].append(fit_once(model, dm, config, tmp_path))
            record = _record(config, rounds, r + 1)
            record["setup_s"] = {
                "frames": round(frames_s, 2),
                "bank": round(bank_s, 2),
                "collect_memory_batches": round(collect_s, 2),
                "first_fit": round(first_fit_s, 2),
            }
            record["frames"] = frames
            if on_round is not None:
                on_round(record)
    return record


def _record(config: FitBenchConfig, rounds: dict[str, list[dict[str, Any]]], done: int) -> dict[str, Any]:
    """The JSON record: config, machine, per-mode medians over rounds, every round, ratios to mode a."""
    modes: dict[str, Any] = {}
    for mode, runs in rounds.items():
        if not runs:
            continue
        modes[mode] = {
            "label": MODES[mode] + (f" p={config.probability}" if mode == "c" else ""),
            "images_per_s": statistics.median(r["images_per_s"] for r in runs),
            "step_ms": statistics.median(r["step_ms"] for r in runs),
            "wait_ms": statistics.median(r["wait_ms"] for r in runs),
            "wait_fraction": statistics.median(r["wait_fraction"] for r in runs),
            "ood_pixel_fraction": runs[-1]["ood_pixel_fraction"],
            "batch": runs[0]["batch"],
            "rounds": runs,
        }
    ratios, waits = {}, {}
    if "a" in modes:
        for mode in modes:
            if mode != "a":
                ratios[f"{mode}/a"] = modes[mode]["images_per_s"] / modes["a"]["images_per_s"]
                waits[mode] = modes[mode]["wait_fraction"] - modes["a"]["wait_fraction"]
    compiled = config.compile_losses and config.device.startswith("cuda")
    cfg = dataclasses.asdict(config)
    cfg["precision"] = config.resolved_precision()
    cfg["threads"] = config.resolved_threads()
    return {
        "benchmark": "bench_fit_gpu",
        "config": cfg,
        "rounds_done": done,
        "model": "OODSegmenter(HFSegformer SegFormer-B0 random init, CrossEntropy + SigmoidSumRejection(0.5), "
        "ood_score=sigmoid_sum, AdamW)",
        "losses_compiled": compiled,
        "compile_note": None
        if compiled or not config.compile_losses
        else "compile_losses applies on CUDA only: the loss terms ran eagerly",
        "machine": machine_info(config.device),
        "modes": modes,
        "ratios": ratios,
        "data_wait_fraction_beyond_a": waits,
    }


def format_table(record: dict[str, Any]) -> str:
    """A markdown table of the record, with the set-up and the machine."""
    cfg, m = record["config"], record["machine"]
    lines = [
        f"## Fit throughput, SegFormer-B0 recipe ({cfg['frame_size'][0]}x{cfg['frame_size'][1]} frames -> "
        f"{cfg['crop_size'][0]}x{cfg['crop_size'][1]} crops, batch {cfg['batch_size']}, {cfg['workers']} workers, "
        f"{cfg['precision']}, losses compiled: {record['losses_compiled']}; {cfg['steps']} timed steps after "
        f"{cfg['warmup']}, median of {record['rounds_done']} interleaved rounds)",
        "",
        "| mode | data | images/s | vs a | step ms | wait ms | time waiting | OOD pixels | every round (images/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in record["modes"].items():
        ratio = record["ratios"].get(f"{mode}/a")
        vs_a = "1.00x" if mode == "a" else "-" if ratio is None else f"{ratio:.2f}x"
        ood = "-" if r["ood_pixel_fraction"] is None else f"{100 * r['ood_pixel_fraction']:.2f}%"
        every = ", ".join(f"{x['images_per_s']:.2f}" for x in r["rounds"])
        lines.append(
            f"| {mode} | {r['label']} | {r['images_per_s']:.2f} | {vs_a} | {r['step_ms']:.1f} | {r['wait_ms']:.1f} "
            f"| {100 * r['wait_fraction']:.1f}% | {ood} | {every} |"
        )
    extra = record.get("data_wait_fraction_beyond_a") or {}
    if extra:
        parts = ", ".join(f"{100 * v:.1f}% in {m}" for m, v in extra.items())
        lines += ["", f"Time the training loop waited for the loader, beyond mode a's per-step overhead: {parts}."]
    if record.get("compile_note"):
        lines += ["", f"Note: {record['compile_note']}."]
    gpu = m.get("gpu", "no GPU")
    lines += [
        "",
        f"Machine: {gpu}; {m['cpu']}, {m['cpu_count']} CPUs (load {m['load_average_1m']}); Python {m['python']}, "
        f"torch {m['torch']}, lightning {m['lightning']}, transformers {m.get('transformers', '?')}; "
        f"set-up {record.get('setup_s')}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line
def _pair(text: str, kind: type) -> tuple:
    parts = text.replace(",", "x").split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two values such as 512x1024, got {text!r}")
    return tuple(kind(p) for p in parts)


def _data_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value (a YAML value), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def config_from_args(args: argparse.Namespace) -> FitBenchConfig:
    """The preset of ``--size`` with every option given on the command line applied over it."""
    values: dict[str, Any] = dict(PRESETS[args.size])
    for field in (
        "workers", "steps", "warmup", "rounds", "frame_size", "crop_size", "batch_size", "precision",
        "unique_frames", "bank_size", "memory_batches", "probability", "seed", "threads",
    ):  # fmt: skip
        value = getattr(args, field)
        if value is not None:
            values[field] = value
    if args.steps is None and values["workers"] > 0:  # whole waves of batches (one per worker)
        values["steps"] = math.ceil(values["steps"] / values["workers"]) * values["workers"]
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    return FitBenchConfig(
        device=args.device,
        modes=modes,
        compile_losses=not args.no_compile,
        data_options=dict(args.data_option or []),
        **values,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: a size preset and options over it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", choices=sorted(PRESETS), default="small", help="preset of the sizes below")
    p.add_argument("--workers", type=int, help="DataLoader workers (small: 2, full: 14)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per mode and round (best a multiple of --workers)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (workers start, first batches)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of every mode; medians are reported")
    p.add_argument("--modes", default="a,b,c", help="modes to run, e.g. a,c")
    p.add_argument("--no-compile", action="store_true", help="leave the loss terms eager (compile_losses=False)")
    p.add_argument("--probability", type=float, help="outlier probability of mode c (default 0.5, the recipe's)")
    p.add_argument("--frame-size", type=lambda s: _pair(s, int), help="frames written, HxW")
    p.add_argument("--crop-size", type=lambda s: _pair(s, int), help="training crop, HxW")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--precision", help="Lightning precision (default: bf16-mixed on CUDA, 32-true on CPU)")
    p.add_argument("--unique-frames", type=int, help="distinct frames written (hard-linked up to the frames read)")
    p.add_argument("--bank-size", type=int, help="procedural outliers in the bank")
    p.add_argument("--memory-batches", type=int, help="distinct batches mode a cycles through")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads of the training process (default: 1 on CPU)")
    p.add_argument(
        "--data-option",
        action="append",
        type=_data_option,
        metavar="KEY=VALUE",
        help="CityscapesOODDataModule argument for every mode (YAML value), e.g. pin_memory=false; repeatable",
    )
    p.add_argument("--workdir", help="folder for the temporary frames and bank (default: the system temp folder)")
    p.add_argument("--json", type=Path, help="write the JSON record here (rewritten after every round)")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON record after every round."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")

    def on_round(record: dict[str, Any]) -> None:
        if args.json is not None:
            from synthrel_lightning.atomic import atomic_write_json

            args.json.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(args.json, record)
        print(f"round {record['rounds_done']}/{config.rounds}: " + json.dumps(
            {m: round(r["rounds"][-1]["images_per_s"], 2) for m, r in record["modes"].items()}
        ), flush=True)  # fmt: skip

    record = run_benchmark(config, workdir=args.workdir, on_round=on_round)
    print("\n" + format_table(record))
    if args.json is not None:
        print(f"\nJSON: {args.json}")
    return record


if __name__ == "__main__":
    main()
