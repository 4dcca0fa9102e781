"""Cost of the reliability loss terms: OODSegmenter training step, all terms vs cross-entropy only.

Times forward + losses + backward + optimizer step on one fixed batch (with OOD and void
pixels) for the same model, and writes a JSON record. With ``--compile-losses`` a third
variant compiles the summed terms (``OODSegmenter(compile_losses=True)``). ``--arch``
takes an smp architecture (needs segmentation-models-pytorch), ``tiny``, or
``tv_deeplabv3_resnet50`` (torchvision's DeepLabV3, no extra dependency). Example::

    python benchmarks/bench_train_step.py --arch DeepLabV3Plus --encoder resnet18 \
        --height 512 --width 1024 --batch 2 --iters 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from synthrel_lightning.labels import NUM_CLASSES, OOD_ID, VOID_ID
from synthrel_lightning.losses import (
    CrossEntropy,
    EnergyHingeEstimatedMargins,
    LossTerm,
    MaxSoftmaxMargin,
    PositiveEnergy,
    SigmoidSumRejection,
    UniformOutlierExposure,
)
from synthrel_lightning.models import OODSegmenter, SMPSegmenter, TinySegmenter


def build_segmenter(arch: str, encoder: str) -> torch.nn.Module:
    """The benchmarked segmenter, with random weights."""
    if arch == "tiny":
        return TinySegmenter(num_classes=NUM_CLASSES)
    if arch == "tv_deeplabv3_resnet50":
        from torchvision.models.segmentation import deeplabv3_resnet50

        return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False)
    return SMPSegmenter(arch, encoder, encoder_weights=None, num_classes=NUM_CLASSES)


def reliability_terms() -> list[LossTerm]:
    """Cross-entropy plus every outlier-exposure term (margins estimated on the fly)."""
    return [
        CrossEntropy(),
        UniformOutlierExposure(weight=0.5),
        EnergyHingeEstimatedMargins(weight=0.1),
        SigmoidSumRejection(weight=0.1, inlier_weight=0.1),
        MaxSoftmaxMargin(weight=0.1),
        PositiveEnergy(weight=0.1),
    ]


def make_batch(batch: int, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and a semantic target with a square OOD object per frame and some void."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=g)
    target = torch.randint(0, NUM_CLASSES, (batch, height, width), generator=g)
    target[:, height // 3 : height // 2, width // 3 : width // 2] = OOD_ID
    target[:, : height // 8] = VOID_ID
    return images.to(device), target.to(device)


def time_steps(
    module: OODSegmenter, images: torch.Tensor, target: torch.Tensor, iters: int, warmup: int
) -> list[float]:
    """Seconds per training step (forward, losses, backward, optimizer step)."""
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    times = []
    for i in range(warmup + iters):
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = module.compute_losses(module.raw_logits(images), target)["loss"]
        loss.backward()
        optimizer.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    """Run the comparison and print/write the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="DeepLabV3Plus", help="smp architecture, or 'tiny' for TinySegmenter")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median over rounds is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile-losses", action="store_true", help="also time the terms compiled with torch.compile")
    p.add_argument("--label", default="", help="free text stored in the record (e.g. the code revision)")
    p.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "train_step.json")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    segmenter = build_segmenter(args.arch, args.encoder).to(device)
    images, target = make_batch(args.batch, args.height, args.width, device)

    # The variants share the segmenter (same weights; the tiny SGD steps do not change the
    # timing) and are built once, so a compiled variant compiles once.
    modules = {
        "cross_entropy": OODSegmenter(segmenter, losses=[CrossEntropy()]).to(device),
        "all_terms": OODSegmenter(segmenter, losses=reliability_terms()).to(device),
    }
    if args.compile_losses:
        modules["all_terms_compiled"] = OODSegmenter(segmenter, losses=reliability_terms(), compile_losses=True).to(
            device
        )
    per_step: dict[str, list[float]] = {name: [] for name in modules}
    errors: dict[str, str] = {}
    for _ in range(args.rounds):  # alternate, so drifting machine load hits every variant
        for name, module in modules.items():
            if name in errors:
                continue
            try:
                per_step[name].append(statistics.median(time_steps(module, images, target, args.iters, args.warmup)))
            except Exception as exc:  # a compiler failure must not lose the eager measurements
                if name != "all_terms_compiled":
                    raise
                errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
    seconds = {name: statistics.median(v) for name, v in per_step.items() if v}
    ce, full = seconds["cross_entropy"], seconds["all_terms"]
    names = {"tiny": "TinySegmenter", "tv_deeplabv3_resnet50": "torchvision deeplabv3_resnet50"}
    record = {
        "label": args.label,
        "model": names.get(args.arch, f"{args.arch}/{args.encoder}"),
        "batch": [args.batch, 3, args.height, args.width],
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "terms": [type(t).__name__ for t in reliability_terms()],
        "seconds_per_step": seconds,
        "rounds": per_step,
        "ratio": full / ce,
    }
    if "all_terms_compiled" in seconds:
        record["ratio_compiled"] = seconds["all_terms_compiled"] / ce
    if errors:
        record["errors"] = errors
    print(json.dumps(record, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=args.output.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
