"""DataLoader throughput: outlier mixing from an on-disk bank vs the plain Cityscapes loader.

Writes synthetic Cityscapes-layout frames (2048x1024 PNGs) and a procedural outlier bank
to a temp dir, then times both loaders with identical transforms (random scale, 1024x512
crop, flip, colour jitter, normalise), interleaving the runs (alternating their order)
so machine load affects both alike. Reports images/s and the workers' own CPU time per
image (user + system, unaffected by other processes: the throughput ratio of a CPU-bound
loader on an idle machine). Prints a markdown table and the machine it ran on.

    python benchmarks/bench_mixing.py [--frames 24] [--workers 2] [--rounds 5] [--output float|uint8] [--format-1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package, when run as a script
from synthrel_lightning.data.cityscapes import CityscapesDataset  # noqa: E402
from synthrel_lightning.data.collate import collate_samples
from synthrel_lightning.data.keyed import KeyedDataset
from synthrel_lightning.data.transforms import train_transform
from synthrel_lightning.synthesis import (
    BankSource,
    OutlierBank,
    OutlierMixer,
    ProceduralObjectSource,
    fill_bank,
)
from synthrel_lightning.synthesis.bank import encode_entry


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def write_frames(root: Path, n: int, seed: int = 0) -> None:
    """Street-like frames: sky, buildings, road and noise, with label ids in the official encoding."""
    rng = np.random.default_rng(seed)
    h, w = 1024, 2048
    img_dir = root / "leftImg8bit" / "train" / "synth"
    lab_dir = root / "gtFine" / "train" / "synth"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    for i in range(n):
        horizon = int(h * rng.uniform(0.4, 0.55))
        label = np.full((h, w), 23, np.uint8)  # sky
        for _ in range(8):
            x0 = int(rng.integers(0, w - 200))
            label[int(horizon * rng.uniform(0.2, 0.7)) : horizon, x0 : x0 + int(rng.integers(150, 500))] = 11
        label[horizon:] = 7  # road
        label[horizon:, : w // 6] = 8  # sidewalk
        label[h - 60 :] = 1  # ego vehicle (void)
        base = np.stack([90 + 100 * yy, 110 + 60 * yy, 150 - 40 * yy], -1).repeat(w, 1)
        palette = {23: (70, 130, 180), 11: (70, 70, 70), 7: (128, 64, 128), 8: (244, 35, 232), 1: (0, 0, 0)}
        image = base.copy()
        for lid, colour in palette.items():
            image[label == lid] = 0.5 * image[label == lid] + 0.5 * np.array(colour, np.float32)
        image += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
        stem = f"synth_{i:06d}_000019"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            img_dir / f"{stem}_leftImg8bit.png", compress_level=1
        )
        Image.fromarray(label).save(lab_dir / f"{stem}_gtFine_labelIds.png")


def format_1_bank(bank: OutlierBank, root: Path) -> OutlierBank:
    """A copy of ``bank`` as earlier releases wrote it (one compressed ``.npz`` per entry), opened read-only."""
    old = OutlierBank(root)
    for key, entry in bank.iter_entries():
        path = old.path(key).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_entry(entry, compress=True, version=1))
    return OutlierBank(root, mode="r")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def throughput(dataset, workers: int, batch_size: int) -> tuple[float, float]:
    """Images per second over one pass (after the workers have started), and worker CPU ms per image.

    The CPU time is what the workers themselves spent (user + system, read once they have
    exited), so it does not depend on what else runs on the machine.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=False,
        collate_fn=collate_samples,
    )  # fmt: skip
    cpu0 = _children_cpu_s()
    it = iter(loader)
    first = next(it)  # exclude worker start-up
    total = count = 0
    total += first["image"].shape[0]
    t0 = time.perf_counter()
    for batch in it:
        count += batch["image"].shape[0]
    dt = time.perf_counter() - t0
    del first, it  # the exhausted iterator has joined its workers
    cpu_ms = (_children_cpu_s() - cpu0) * 1000 / max(1, total + count) if workers else float("nan")
    return count / dt, cpu_ms


def _ms(fn, n: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``n`` calls."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bank-size", type=int, default=256)
    ap.add_argument("--probability", type=float, default=0.5)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (e.g. benchmarks/results/)")
    ap.add_argument(
        "--output", choices=("float", "uint8"), default="float", help="uint8: images normalised later, on the device"
    )
    ap.add_argument(
        "--format-1", action="store_true", help="also mix from the same bank stored as earlier releases did (.npz)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cityscapes"
        t0 = time.perf_counter()
        write_frames(root, args.frames)
        bank = OutlierBank(Path(tmp) / "bank")
        fill_bank(ProceduralObjectSource(size_range=(96, 384)), bank, args.bank_size, seed=0)
        setup_s = time.perf_counter() - t0
        base = CityscapesDataset(root, split="train")
        extra = {} if args.output == "float" else {"output": args.output}
        transform = train_transform(crop_size=(512, 1024), seed=0, **extra)
        plain = KeyedDataset(base, transform)
        configs = {
            "plain": plain,
            f"mixing p={args.probability}": KeyedDataset(
                base, transform, mixer=OutlierMixer(BankSource(bank.root), probability=args.probability)
            ),
            "mixing p=1.0": KeyedDataset(base, transform, mixer=OutlierMixer(BankSource(bank.root), probability=1.0)),
        }
        configs["mixing p=1.0, copy_input=False"] = KeyedDataset(
            base, transform, mixer=OutlierMixer(BankSource(bank.root), probability=1.0, copy_input=False)
        )  # CityscapesDataset decodes fresh arrays on every read
        if args.format_1:
            old = format_1_bank(bank, Path(tmp) / "bank-format-1")
            configs["mixing p=1.0, format 1 bank (.npz)"] = KeyedDataset(
                base, transform, mixer=OutlierMixer(BankSource(old.root), probability=1.0)
            )
        for ds in configs.values():
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(0)
        # Per-sample costs in this process: robust to the load of other processes on the machine.
        raws = [base[i] for i in range(min(8, len(base)))]
        mixer = configs["mixing p=1.0"].mixer
        costs = {
            "read frame (PNG decode + label ids)": _ms(lambda i: base[i % len(base)], 8),
            "transform (scale, crop, flip, jitter, normalise)": _ms(lambda i: transform(raws[i % len(raws)]), 8),
            "mixing, p=1.0 (bank read + 1-3 pastes)": _ms(lambda i: mixer(raws[i % len(raws)], index=i, epoch=0), 32),
        }
        results: dict[str, list[float]] = {k: [] for k in configs}
        worker_cpu: dict[str, list[float]] = {k: [] for k in configs}
        throughput(plain, args.workers, args.batch_size)  # warm the page cache
        for r in range(args.rounds):
            order = list(configs.items())
            for name, ds in order if r % 2 == 0 else reversed(order):
                if hasattr(ds, "set_epoch"):
                    ds.set_epoch(r)
                rate, cpu_ms = throughput(ds, args.workers, args.batch_size)
                results[name].append(rate)
                worker_cpu[name].append(cpu_ms)
    ref = statistics.median(results["plain"])
    ref_cpu = statistics.median(worker_cpu["plain"])
    print(
        f"\n## Outlier mixing DataLoader throughput ({args.frames} frames 2048x1024 -> 1024x512 crops, "
        f"{args.workers} workers, batch {args.batch_size}, {args.output} output, "
        f"median of {args.rounds} interleaved rounds)\n"
    )
    print(
        "| loader | images/s (median) | all rounds | vs plain | worker CPU ms/image (median) | "
        "vs plain (CPU-bound throughput) |"
    )
    print("|---|---|---|---|---|---|")
    for name, vals in results.items():
        med = statistics.median(vals)
        med_cpu = statistics.median(worker_cpu[name])
        print(
            f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in vals)} | {med / ref:.2f}x | {med_cpu:.1f} | "
            f"{ref_cpu / med_cpu:.2f}x |"
        )
    print("\n| per-sample step (main process) | ms |\n|---|---|")
    for name, ms in costs.items():
        print(f"| {name} | {ms:.1f} |")
    machine = (
        f"{cpu_name()}, {os.cpu_count()} CPUs, load average {load_average():.1f}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    print(f"\nMachine: {machine}; setup (frames + bank of {args.bank_size}) {setup_s:.1f}s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "machine": machine,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "images_per_s": results,
            "worker_cpu_ms_per_image": worker_cpu,
            "per_sample_ms": costs,
        }
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
