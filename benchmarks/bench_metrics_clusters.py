"""Benchmark: binned PixelOODMetrics on clustered scores, against scikit-learn's exact values.

Scores ``z + c`` with ``z ~ N(0, 1)`` (shifted by 2 on the 5 % OOD pixels) and ``c`` drawn from
the cluster centres, streamed in 8 batches: mixed, or with the far cluster arriving after every
near pixel (``late``). Reports ``|binned - exact|`` per metric, the metric's own proven bound
and whether it switched to the exact sort, for the bins alone (``fallback_pixels=0``) and
with the default exact fallback, as a markdown table::

    python benchmarks/bench_metrics_clusters.py
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_metrics_clusters.py   # another version
"""

from __future__ import annotations

import argparse
import platform
import warnings

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

import synthrel_lightning
from synthrel_lightning.metrics import PixelOODMetrics

CASES = [
    ("z + 1e2 B", [0.0, 1e2]),
    ("z + 1e6 B", [0.0, 1e6]),
    ("z + 1e12 B", [0.0, 1e12]),
    ("6e5 / 9e5 (one exponent range)", [6e5, 9e5]),
]


def clustered(centres: list[float], n: int, late: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, generator=g) < 0.05).long()
    z = torch.randn(n, generator=g, dtype=torch.float64) + 2.0 * target
    pick = torch.randint(0, len(centres), (n,), generator=g)
    scores = z + torch.tensor(centres, dtype=torch.float64)[pick]
    if late:
        order = torch.argsort(pick, stable=True)
        scores, target = scores[order], target[order]
    return scores, target


def sklearn_values(scores: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    y, s = target.numpy(), scores.numpy()
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, _ = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95)]),
        "best_f1": float(f1.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=400_000)
    args = parser.parse_args()
    print(f"## Binned PixelOODMetrics on clustered scores ({args.pixels} pixels, 8 batches)\n")
    print(f"package: {synthrel_lightning.__file__}; machine: {platform.machine()} {platform.processor()}\n")
    print("| scores | order | fallback | exact sort used | AUROC err | AP err | FPR95 err | best F1 err | bound (AP) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for name, centres in CASES:
        for late in (False, True):
            scores, target = clustered(centres, args.pixels, late)
            ref = sklearn_values(scores, target)
            for fallback in (0, 1 << 25):
                metric = PixelOODMetrics(fallback_pixels=fallback)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for chunk_s, chunk_t in zip(scores.chunk(8), target.chunk(8)):
                        metric.update(chunk_s, chunk_t)
                    out = metric.compute()
                errors = [abs(float(out[key]) - ref[key]) for key in ("auroc", "ap", "fpr95", "best_f1")]
                bound = (metric.resolution or {}).get("ap", float("nan"))
                print(
                    f"| {name} | {'late' if late else 'mixed'} | {'on' if fallback else 'off'} | "
                    f"{'yes' if getattr(metric, 'exact_fallback', None) else 'no'} | "
                    + " | ".join(f"{e:.1e}" for e in errors)
                    + f" | {bound:.1e} |"
                )


if __name__ == "__main__":
    main()
