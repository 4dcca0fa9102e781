"""The benchmark run: machine description, interleaved rounds of every mode, the JSON record and its table."""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from .config import MODES, FitBenchConfig
from .pipeline import MemoryDataModule, build_model, collect_batches, datamodule_options, make_datamodule
from .scene import build_bank, write_frames
from .timing import fit_once


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


__all__ = ["format_table", "machine_info", "run_benchmark"]
