"""Temperature scaling with the paper's ECE grid (950 temperatures x 15 bins): the direct path vs the vectorised one.

Variants, timed side by side in one run (interleaved rounds, medians):

* ``direct, every pixel``: the exhaustive computation (``softmax(z / T)`` over all classes
  for every T, ``grid_bin_sums_reference``) over every labelled pixel: what ``calibrate
  --method ece_grid`` computed before the vectorised grid and the per-frame sample.
* ``vectorised, every pixel``: ``fit_temperature(..., pixels_per_image="all")``.
* ``vectorised, 20k px/frame``: ``fit_temperature(...)`` with the default per-frame sample.

Cases:

* ``demo``: 16 frames of 128x256 with 19 classes (the demo's validation set size).
* ``cityscapes``: 2048x1024 frames with 19 classes, ``--large-frames`` of them timed (3 by
  default) and the time projected linearly to ``--project-frames`` (500) frames; the direct
  path is timed on ``--direct-pixels`` pixels of a frame and projected per pixel (it is
  linear in pixels). With ``--large-frames 500`` (e.g. on a GPU) nothing is projected.

The logits are those of an overconfident classifier (labels drawn from ``softmax(z / 2.3)``)
with about 3% void pixels. Prints a markdown table and the machine::

    python benchmarks/bench_calibration.py [--threads 2] [--rounds 3] [--json benchmarks/results/calibration_cpu.json]
    python benchmarks/bench_calibration.py --device cuda --large-frames 500 \
        --json benchmarks/results/calibration_cuda.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.calibration import fit_temperature, temperature_grid
from synthrel_lightning.calibration.grid import grid_bin_sums_reference
from synthrel_lightning.metrics.functional import ece_from_sums

K = 19
VOID = 255


def frames(n: int, h: int, w: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,K,h,w) logits of an overconfident classifier and (n,h,w) labels drawn from its calibrated softmax."""
    g = torch.Generator(device=device).manual_seed(seed)
    coarse = torch.randn(n, K, max(1, h // 8), max(1, w // 8), generator=g, device=device) * 2.0
    true = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    true = true + 0.5 * torch.randn(n, K, h, w, generator=g, device=device)
    probs = torch.softmax(true, 1).permute(0, 2, 3, 1).reshape(-1, K)
    labels = torch.multinomial(probs, 1, generator=g).reshape(n, h, w)
    labels[torch.rand(n, h, w, generator=g, device=device) < 0.03] = VOID
    return true * 2.3, labels


def direct_every_pixel(z: torch.Tensor, y: torch.Tensor) -> float:
    """The exhaustive ECE grid over every labelled pixel; returns T."""
    flat = z.movedim(1, -1).reshape(-1, K)
    t = y.reshape(-1)
    keep = t < K
    temps = temperature_grid()
    ece = ece_from_sums(grid_bin_sums_reference(flat[keep], t[keep], temps))
    return round(float(temps[int(ece.argmin())]), 10)


def streamed(z: torch.Tensor, y: torch.Tensor, repeat: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The frames one by one, ``repeat`` times over (a longer set of the same frames)."""
    for _ in range(repeat):
        for i in range(z.shape[0]):
            yield z[i : i + 1], y[i : i + 1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def run_case(name: str, variants: dict[str, tuple[Callable[[], Any], float, int]], rounds: int, device: torch.device):
    """Median seconds per variant over interleaved rounds; ``variants``: fn, projection factor, pixels."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    temps: dict[str, Any] = {}
    for _ in range(rounds):
        for variant, (fn, _, _) in variants.items():
            seconds, result = timed(fn, device)
            times[variant].append(seconds)
            temps[variant] = result
    rows = []
    for variant, (_, factor, pixels) in variants.items():
        median = statistics.median(times[variant])
        rows.append(
            {
                "case": name,
                "variant": variant,
                "pixels": pixels,
                "seconds_timed": median,
                "projection_factor": factor,
                "seconds": median * factor,
                "temperature": temps[variant] if factor == 1.0 else None,
            }
        )
    return rows


def machine(device: torch.device) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--demo-frames", type=int, default=16)
    parser.add_argument("--demo-size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    parser.add_argument("--large-frames", type=int, default=3, help="2048x1024 frames timed")
    parser.add_argument("--project-frames", type=int, default=500, help="set size the large case is projected to")
    parser.add_argument("--direct-pixels", type=int, default=20_000, help="pixels the direct path is timed on (large)")
    parser.add_argument("--skip-direct-demo", action="store_true", help="skip the (slow) direct path on the demo")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []

    h, w = args.demo_size
    z, y = frames(args.demo_frames, h, w, device)
    labelled = int((y < K).sum())
    sampled = sum(min(20_000, int((y[i] < K).sum())) for i in range(y.shape[0]))
    demo: dict[str, tuple[Callable[[], Any], float, int]] = {}
    if not args.skip_direct_demo:
        demo["direct, every pixel"] = (lambda: direct_every_pixel(z, y), 1.0, labelled)
    demo["vectorised, every pixel"] = (
        lambda: fit_temperature(streamed(z, y), "ece_grid", pixels_per_image="all").temperature,
        1.0,
        labelled,
    )
    demo["vectorised, 20k px/frame"] = (
        lambda: fit_temperature(streamed(z, y), "ece_grid").temperature,
        1.0,
        sampled,
    )
    rows += run_case(f"demo: {args.demo_frames} frames {h}x{w}", demo, args.rounds, device)
    del z, y

    z, y = frames(1, 1024, 2048, device, seed=1)
    per_frame = int((y < K).sum())
    n_large, n_set = args.large_frames, args.project_frames
    flat = z.movedim(1, -1).reshape(-1, K)[: args.direct_pixels]
    flat_y = y.reshape(-1)[: args.direct_pixels].clamp(max=K - 1)
    temps = temperature_grid()
    large: dict[str, tuple[Callable[[], Any], float, int]] = {
        "direct, every pixel": (
            lambda: grid_bin_sums_reference(flat, flat_y, temps),
            per_frame * n_set / flat.shape[0],
            per_frame * n_set,
        ),
        "direct, 20k px/frame": (
            lambda: grid_bin_sums_reference(flat, flat_y, temps),
            20_000 * n_set / flat.shape[0],
            20_000 * n_set,
        ),
        "vectorised, 20k px/frame": (
            lambda: fit_temperature(streamed(z, y, n_large), "ece_grid").temperature,
            n_set / n_large,
            20_000 * n_set,
        ),
    }
    rows += run_case(f"cityscapes: {n_set} frames 2048x1024", large, args.rounds, device)

    info = machine(device)
    print(f"machine: {info}")
    print("| case | variant | pixels | seconds | timed (s) | projected | T |")
    print("|---|---|---:|---:|---:|---|---:|")
    for r in rows:
        projected = "no" if r["projection_factor"] == 1.0 else f"x{r['projection_factor']:.4g}"
        t = "" if r["temperature"] is None else f"{r['temperature']:.2f}"
        print(
            f"| {r['case']} | {r['variant']} | {r['pixels']:,} | {r['seconds']:.1f} | {r['seconds_timed']:.2f} "
            f"| {projected} | {t} |"
        )
    demo_t = {r["variant"]: r["temperature"] for r in rows if r["case"].startswith("demo")}
    if "direct, every pixel" in demo_t:
        same = demo_t["direct, every pixel"] == demo_t["vectorised, every pixel"]
        print(f"demo: T of the vectorised grid {'equals' if same else 'DIFFERS FROM'} the direct grid's (every pixel)")
    for case in dict.fromkeys(r["case"] for r in rows):
        case_rows = [r for r in rows if r["case"] == case]
        base = case_rows[0]
        for r in case_rows[1:]:
            print(f"{case}: {r['variant']} is {base['seconds'] / r['seconds']:.1f}x faster than {base['variant']}")
    if args.json is not None:
        atomic_write_json(args.json, {"machine": info, "args": {**vars(args), "json": str(args.json)}, "rows": rows})


if __name__ == "__main__":
    main()
