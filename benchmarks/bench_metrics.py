"""Benchmark: streaming binned PixelOODMetrics vs torchmetrics' exact AUROC / AP / ROC.

Streams synthetic but realistic frames (energy scores from upsampled random
logits, ~2 % OOD pixels in blobs, a void band) through both, timing only the
metric calls (update + compute), and reports wall time, metric-state memory,
process peak RSS, the agreement of the values and the binned metric's own
resolution bound, as a markdown table. ``--score`` maps the energies to another
kind of score (a saturating probability, an offset or scaled score) to check the
agreement on it.

    python benchmarks/bench_metrics.py --frames 50 --height 1024 --width 2048
    python benchmarks/bench_metrics.py --frames 4 --height 256 --width 512   # quick
    python benchmarks/bench_metrics.py --frames 4 --height 256 --width 512 --score sigmoid20
    python benchmarks/bench_metrics.py --frames 10 --height 512 --width 1024 --busy 2   # under CPU load

``--compare-official`` instead measures how far the official SegmentMeIfYouCan aggregation
(per-frame 768 percentile bins, its best-F1 threshold) is from the exact definitions, on the
synthetic frames or, with ``--road-anomaly DIR``, on the Road Anomaly labels with a synthetic score:

    python benchmarks/bench_metrics.py --compare-official --frames 20 --height 512 --width 1024
    python benchmarks/bench_metrics.py --compare-official --road-anomaly ../shared/datasets/road_anomaly

``--busy N`` runs N processes that spin on the CPU beside the timing (standing in for busy
data-loader workers) and reports the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import warnings

import torch
import torch.nn.functional as F

SCORES = {
    "energy": lambda e: e,
    "sigmoid20": lambda e: torch.sigmoid(20 * (e + 8.0)),  # a probability saturating at 0 and 1
    "offset": lambda e: 1e6 + e.double(),  # float64: a large offset
    "tiny": lambda e: e * 1e-12,
    "huge": lambda e: e * 1e12,
}


def make_frame(seed: int, height: int, width: int, ood_fraction: float, num_classes: int = 19, score: str = "energy"):
    """OOD scores (H, W) of the given kind and a 0/1/255 target (H, W) for one synthetic frame."""
    g = torch.Generator().manual_seed(seed)
    low = (max(height // 8, 4), max(width // 8, 4))
    logits = torch.randn(1, num_classes, *low, generator=g) * 4.0 + 6.0 * torch.rand(1, 1, *low, generator=g)
    blobs = F.interpolate(torch.rand(1, 1, low[0] // 2, low[1] // 2, generator=g), size=low, mode="bilinear")
    ood_low = blobs > torch.quantile(blobs.flatten(), 1.0 - ood_fraction)
    logits = torch.where(ood_low, logits * 0.5 - 2.0, logits)
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    logits += torch.randn(logits.shape, generator=g)
    scores = -torch.logsumexp(logits, dim=1)[0]
    ood = F.interpolate(ood_low.float(), size=(height, width), mode="nearest")[0, 0] > 0.5
    target = ood.to(torch.uint8)
    target[: height // 12] = 255
    return SCORES[score](scores), target


def _spin() -> None:
    while True:
        pass


def start_busy(n: int) -> list:
    """Start ``n`` processes that keep a CPU core busy until terminated."""
    import multiprocessing as mp

    procs = [mp.get_context("fork").Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    time.sleep(1.0 if n else 0.0)  # let them take the cores
    return procs


def road_anomaly_frames(root: str, scale: int = 2):
    """Road Anomaly labels (>= 2: anomaly; downscaled ``scale`` times, nearest) with a synthetic score.

    The score is smooth noise plus a blurred copy of the anomaly mask through a sigmoid: a detector
    that finds the objects with uncertain borders and scattered false alarms.
    """
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    names = json.loads((Path(root) / "frame_list.json").read_text())
    for i, name in enumerate(names):
        stem = Path(name).stem
        label = np.array(Image.open(Path(root) / "frames" / f"{stem}.labels" / "labels_semantic.png"))
        target = torch.from_numpy((label >= 2).astype(np.uint8))[::scale, ::scale].contiguous()
        g = torch.Generator().manual_seed(i)
        h, w = target.shape
        noise = F.avg_pool2d(torch.randn(1, 1, h, w, generator=g), 15, 1, 7)[0, 0] * 15  # std about 1
        soft = F.avg_pool2d(target[None, None].float(), 9, 1, 4)[0, 0]
        yield torch.sigmoid(noise + 2.5 * soft - 1.5), target


def compare_official(args) -> None:
    """Print exact vs official values (pixel and component metrics) and their differences."""
    from synthrel_lightning.metrics import ComponentMetrics, PixelOODMetrics

    if args.road_anomaly:
        frames = list(road_anomaly_frames(args.road_anomaly))
        what = f"Road Anomaly labels ({len(frames)} frames at half size) with a synthetic score"
    else:
        frames = [
            make_frame(i, args.height, args.width, args.ood_fraction, score=args.score) for i in range(args.frames)
        ]
        what = f"{len(frames)} synthetic {args.height}x{args.width} frames, {args.score} scores"
    exact, official = PixelOODMetrics(mode="exact"), PixelOODMetrics(aggregation="official")
    for scores, target in frames:
        exact.update(scores, target)
        official.update(scores, target)
    pixel = {"exact": exact.compute(), "official": official.compute()}
    comps = {
        "exact": ComponentMetrics(threshold=float(pixel["exact"]["best_f1_threshold"])),
        "official": ComponentMetrics(aggregation="official", threshold=float(pixel["official"]["best_f1_threshold"])),
    }
    for scores, target in frames:
        for metric in comps.values():
            metric.update(scores, target)
    values = {
        k: {**{n: float(v) for n, v in pixel[k].items()}, **{n: float(v) for n, v in comps[k].compute().items()}}
        for k in ("exact", "official")
    }
    print(f"## Exact vs official SegmentMeIfYouCan aggregation: {what}\n")
    print("| value | exact | official | official - exact |")
    print("|---|---|---|---|")
    for key in ("ap", "auroc", "fpr95", "best_f1", "best_f1_threshold", "siou", "ppv", "mean_f1"):
        a, b = values["exact"][key], values["official"][key]
        print(f"| {key} | {a:.6f} | {b:.6f} | {b - a:+.2e} |")


def state_bytes(metric) -> int:
    """Bytes held by a torchmetrics Metric's (or MetricCollection's) states."""
    metrics = metric.values() if hasattr(metric, "values") else [metric]
    total = 0
    seen: set[int] = set()
    for m in metrics:
        for name in m._defaults:
            value = getattr(m, name)
            for t in value if isinstance(value, list) else [value]:
                if id(t) not in seen:  # compute groups share states
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_binned(frames: int, args) -> dict:
    from synthrel_lightning.metrics import PixelOODMetrics

    metric = PixelOODMetrics()
    elapsed = 0.0
    for i in range(frames):
        scores, target = make_frame(i, args.height, args.width, args.ood_fraction, score=args.score)
        t0 = time.perf_counter()
        metric.update(scores, target)
        elapsed += time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resolution is reported in the table
        out = {k: float(v) for k, v in metric.compute().items()}
    elapsed += time.perf_counter() - t0
    return {
        "values": out,
        "resolution": metric.resolution,
        "time": elapsed,
        "state_mb": state_bytes(metric) / 2**20,
        "rss_mb": peak_rss_mb(),
    }


def run_torchmetrics(frames: int, args) -> dict:
    from torchmetrics import MetricCollection
    from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryROC

    # one compute group: the three metrics share a single copy of the stored scores
    metric = MetricCollection(
        {
            "auroc": BinaryAUROC(ignore_index=255),
            "ap": BinaryAveragePrecision(ignore_index=255),
            "roc": BinaryROC(ignore_index=255),
        },
        compute_groups=True,
    )
    elapsed = 0.0
    for i in range(frames):
        scores, target = make_frame(i, args.height, args.width, args.ood_fraction, score=args.score)
        # torchmetrics applies a sigmoid to scores outside [0, 1]; it is monotone, so rankings are kept
        t0 = time.perf_counter()
        metric.update(scores.flatten(), target.flatten().long())
        elapsed += time.perf_counter() - t0
    mem = state_bytes(metric) / 2**20
    t0 = time.perf_counter()
    res = metric.compute()
    fpr, tpr, _ = res["roc"]
    fpr95 = float(fpr[torch.searchsorted(tpr, torch.tensor(0.95))])
    elapsed += time.perf_counter() - t0
    values = {"auroc": float(res["auroc"]), "ap": float(res["ap"]), "fpr95": fpr95}
    return {"values": values, "time": elapsed, "state_mb": mem, "rss_mb": peak_rss_mb()}


def run_ours_exact(frames: int, args) -> dict:
    from synthrel_lightning.metrics import PixelOODMetrics

    metric = PixelOODMetrics(mode="exact")
    elapsed = 0.0
    for i in range(frames):
        scores, target = make_frame(i, args.height, args.width, args.ood_fraction, score=args.score)
        t0 = time.perf_counter()
        metric.update(scores, target)
        elapsed += time.perf_counter() - t0
    mem = state_bytes(metric) / 2**20
    t0 = time.perf_counter()
    values = {k: float(v) for k, v in metric.compute().items()}
    elapsed += time.perf_counter() - t0
    return {"values": values, "time": elapsed, "state_mb": mem, "rss_mb": peak_rss_mb()}


def main() -> None:
    """Run the benchmark and print a markdown report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50, help="frames streamed through the binned metric")
    parser.add_argument("--exact-frames", type=int, default=None, help="frames for torchmetrics (default: --frames)")
    parser.add_argument("--memory-frames", type=int, default=10, help="smaller run to show the state is flat")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--ood-fraction", type=float, default=0.02)
    parser.add_argument("--score", choices=sorted(SCORES), default="energy", help="kind of OOD score")
    parser.add_argument(
        "--exact",
        choices=["torchmetrics", "ours"],
        default="torchmetrics",
        help="the exact reference: torchmetrics (timed) or PixelOODMetrics(mode='exact')",
    )
    parser.add_argument("--busy", type=int, default=0, help="spinning processes beside the timing (CPU load)")
    parser.add_argument("--compare-official", action="store_true", help="exact vs official aggregation")
    parser.add_argument("--road-anomaly", default=None, help="with --compare-official: the Road Anomaly folder")
    args = parser.parse_args()
    if args.compare_official:
        compare_official(args)
        return
    exact_frames = args.exact_frames or args.frames
    busy = start_busy(args.busy)
    try:
        report(args, exact_frames)
    finally:
        for p in busy:
            p.terminate()


def report(args, exact_frames: int) -> None:
    """Time both metrics and print the markdown report."""

    small = run_binned(min(args.memory_frames, args.frames), args)
    binned = run_binned(args.frames, args)
    binned_same = binned if exact_frames == args.frames else run_binned(exact_frames, args)
    if args.exact == "torchmetrics" and args.score in ("offset", "tiny", "huge"):
        raise SystemExit(
            f"--score {args.score}: torchmetrics squashes scores outside [0, 1] with a sigmoid, which ties these; "
            "use --exact ours"
        )
    exact = run_torchmetrics(exact_frames, args) if args.exact == "torchmetrics" else run_ours_exact(exact_frames, args)
    exact_name = "torchmetrics BinaryAUROC+AP+ROC (exact)" if args.exact == "torchmetrics" else "PixelOODMetrics exact"

    print(
        f"## PixelOODMetrics (binned) vs torchmetrics exact ({args.height}x{args.width}, "
        f"{args.ood_fraction:.0%} OOD, {args.score} scores)\n"
    )
    print(
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.busy} busy processes beside it, load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| metric | frames | wall time (s) | state memory (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    print(
        f"| PixelOODMetrics binned | {min(args.memory_frames, args.frames)} | {small['time']:.2f} | "
        f"{small['state_mb']:.1f} | {small['rss_mb']:.0f} |"
    )
    print(
        f"| PixelOODMetrics binned | {args.frames} | {binned['time']:.2f} | {binned['state_mb']:.1f} | "
        f"{binned['rss_mb']:.0f} |"
    )
    if binned_same is not binned:
        print(
            f"| PixelOODMetrics binned | {exact_frames} | {binned_same['time']:.2f} | "
            f"{binned_same['state_mb']:.1f} | {binned_same['rss_mb']:.0f} |"
        )
    print(f"| {exact_name} | {exact_frames} | {exact['time']:.2f} | {exact['state_mb']:.1f} | {exact['rss_mb']:.0f} |")
    print(f"\nSpeed-up at {exact_frames} frames: {exact['time'] / binned_same['time']:.1f}x\n")
    print("| value | binned | exact | abs. difference | binned resolution bound |")
    print("|---|---|---|---|---|")
    for key in ("auroc", "ap", "fpr95", "best_f1"):
        if key in exact["values"]:
            a, b = binned_same["values"][key], exact["values"][key]
            bound = binned_same["resolution"][key]
            print(f"| {key} | {a:.6f} | {b:.6f} | {abs(a - b):.2e} | {bound:.1e} |")


if __name__ == "__main__":
    main()
