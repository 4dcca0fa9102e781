"""Does each outlier-exposure term improve OOD detection over cross-entropy alone?

Trains the demo segmenter on the procedural demo scenes (training outliers:
ellipses/polygons with flat/striped/noisy textures) with cross-entropy alone and
with each outlier-exposure term, same seed and schedule, then evaluates on the
held-out synthetic objects (stars/blobs with checker/gradient textures) with
every OOD score. Prints a Markdown table (AP / AUROC / FPR95 / mIoU).

    python benchmarks/exp_outlier_exposure.py --epochs 8
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from synthrel_lightning.data import CityscapesDataset, DemoDataModule, write_demo_cityscapes
from synthrel_lightning.losses import (
    CrossEntropy,
    EnergyHinge,
    EnergyHingeEstimatedMargins,
    FocalLoss,
    LabelSmoothingCE,
    MarginLabelSmoothing,
    MaxSoftmaxMargin,
    MetaOoD,
    SigmoidSumRejection,
    UniformOutlierExposure,
)
from synthrel_lightning.models import OODSegmenter, TinySegmenter
from synthrel_lightning.synthesis import OutlierMixer, ProceduralObjectSource

METHODS = {
    "cross-entropy only": lambda: [CrossEntropy()],
    "+ uniform OE (λ=0.5)": lambda: [CrossEntropy(), UniformOutlierExposure(weight=0.5)],
    "+ energy hinge (fixed margins)": lambda: [CrossEntropy(), EnergyHinge(weight=0.1)],
    "+ energy hinge (estimated margins)": lambda: [CrossEntropy(), EnergyHingeEstimatedMargins(weight=0.1)],
    "+ energy hinge (estimated margins, weight 1)": lambda: [
        CrossEntropy(),
        EnergyHingeEstimatedMargins(weight=1.0),
    ],
    "+ energy hinge (margins estimated over 16 steps, then frozen)": lambda: [
        CrossEntropy(),
        EnergyHingeEstimatedMargins(weight=0.1, freeze_after=16),
    ],
    "Meta-OoD (pixel-pooled, λ 0.9, in place of CE)": lambda: [MetaOoD(lam=0.9)],
    "+ sigmoid-sum rejection (extension)": lambda: [CrossEntropy(), SigmoidSumRejection(weight=0.5)],
    "+ max-softmax margin (extension)": lambda: [CrossEntropy(), MaxSoftmaxMargin(weight=0.5)],
    # Calibration terms (in place of plain cross-entropy): judged by ECE on the clean set.
    "label smoothing (0.1)": lambda: [LabelSmoothingCE(smoothing=0.1)],
    "focal loss (gamma 2)": lambda: [FocalLoss(gamma=2.0)],
    "margin label smoothing (m 10, alpha 0.1)": lambda: [MarginLabelSmoothing(margin=10.0, alpha=0.1)],
}
CALIBRATION_METHODS = ("label smoothing (0.1)", "focal loss (gamma 2)", "margin label smoothing (m 10, alpha 0.1)")
SCORES = ("msp", "max_logit", "entropy", "energy", "sigmoid_sum")


class Fogged(torch.utils.data.Dataset):
    """Validation frames under a synthetic fog (a covariate shift): blended towards grey, blurred contrast."""

    def __init__(self, base: torch.utils.data.Dataset, density: float = 0.6) -> None:
        self.base, self.density = base, density

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.base[index])
        image = sample["image"].astype(np.float32)
        sample["image"] = np.clip((1 - self.density) * image + self.density * 200.0, 0, 255).astype(np.uint8)
        return sample


def datamodule(root: Path, num_train: int) -> DemoDataModule:
    """The demo scenes with training outliers, held-out evaluation outliers and a fogged copy of the val frames."""
    write_demo_cityscapes(root, num_train=num_train, num_val=32)
    train_src = ProceduralObjectSource(
        size_range=(12, 48), shapes=("ellipse", "polygon"), textures=("flat", "stripes", "noise")
    )
    held_out = ProceduralObjectSource(size_range=(12, 48), shapes=("star", "blob"), textures=("checker", "gradient"))
    return DemoDataModule(
        root=root,
        num_train=num_train,
        num_val=32,
        outliers=OutlierMixer(train_src, probability=0.7, num_objects=(1, 2), seed=0),
        val_outliers=OutlierMixer(held_out, probability=1.0, num_objects=(1, 2), seed=1234),
        extra_val_sets={"demo_fog": Fogged(CityscapesDataset(root, split="val"))},
    )


def run(method: str, epochs: int, root: Path, num_train: int, seed: int) -> dict[str, dict[str, float]]:
    """Train one method and evaluate every score on the held-out objects."""
    L.seed_everything(seed, workers=True)
    model = OODSegmenter(
        TinySegmenter(width=32),
        losses=METHODS[method](),
        optimizer=lambda p: torch.optim.AdamW(p, lr=5e-3, weight_decay=1e-4),
        summary=False,
    )
    dm = datamodule(root, num_train)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs,
        deterministic=True,
        default_root_dir=root.parent,
    )
    trainer.fit(model, datamodule=dm)
    results: dict[str, dict[str, float]] = {}
    for score in SCORES:
        model.set_ood_score(score)
        metrics = trainer.validate(model, datamodule=dm, verbose=False)
        flat = {k: float(v) for d in metrics for k, v in d.items()}
        results[score] = {m: flat[f"val/demo_objects/{m}"] for m in ("ap", "auroc", "fpr95")}
        for m in ("miou", "ece", "nll", "brier"):
            results[score][m] = flat[f"val/demo/{m}"]
            results[score][f"fog_{m}"] = flat[f"val/demo_fog/{m}"]
    return results


def main() -> None:
    """Run every method, print the table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    all_results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        for method in args.methods:
            t0 = time.perf_counter()
            all_results[method] = run(method, args.epochs, root, args.num_train, args.seed)
            print(f"{method}: {time.perf_counter() - t0:.0f}s", flush=True)
    print(
        f"\nMachine: {platform.platform()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{args.epochs} epochs, {args.num_train} training frames, seed {args.seed}\n"
    )
    natural = {
        "cross-entropy only": "msp",
        "+ uniform OE (λ=0.5)": "msp",
        "+ energy hinge (fixed margins)": "energy",
        "+ energy hinge (estimated margins)": "energy",
        "+ energy hinge (estimated margins, weight 1)": "energy",
        "+ energy hinge (margins estimated over 16 steps, then frozen)": "energy",
        "Meta-OoD (pixel-pooled, λ 0.9, in place of CE)": "entropy",
        "+ sigmoid-sum rejection (extension)": "sigmoid_sum",
        "+ max-softmax margin (extension)": "msp",
    }
    print("| method | score | AP | AUROC | FPR95 | mIoU | AP (CE only, same score) |")
    print("|---|---|---|---|---|---|---|")
    base = all_results.get("cross-entropy only")
    for method, res in all_results.items():
        if method in CALIBRATION_METHODS:
            continue
        score = natural[method]
        r = res[score]
        b = f"{base[score]['ap']:.3f}" if base else "-"
        print(f"| {method} | {score} | {r['ap']:.3f} | {r['auroc']:.3f} | {r['fpr95']:.3f} | {r['miou']:.3f} | {b} |")
    print("\nEvery score, AP:\n")
    print("| method | " + " | ".join(SCORES) + " |")
    print("|---|" + "---|" * len(SCORES))
    for method, res in all_results.items():
        print(f"| {method} | " + " | ".join(f"{res[s]['ap']:.3f}" for s in SCORES) + " |")
    print("\nCalibration (temperature 1) on the clean validation frames and on the same frames under fog:\n")
    print("| method | ECE | NLL | Brier | mIoU | ECE (fog) | NLL (fog) | Brier (fog) | mIoU (fog) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, res in all_results.items():
        if method == "cross-entropy only" or method in CALIBRATION_METHODS:
            r = res["msp"]
            print(
                f"| {method} | {r['ece']:.4f} | {r['nll']:.4f} | {r['brier']:.4f} | {r['miou']:.3f} | "
                f"{r['fog_ece']:.4f} | {r['fog_nll']:.4f} | {r['fog_brier']:.4f} | {r['fog_miou']:.3f} |"
            )
    if args.out:
        args.out.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
