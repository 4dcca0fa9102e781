"""Two CPU processes (gloo): synced metric values equal the single-process ones."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from synthrel_lightning.metrics import (
    CalibrationMetrics,
    ComponentMetrics,
    MisclassificationMetrics,
    PixelOODMetrics,
    SegmentationIoU,
)


def _data(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 32, 40, generator=g) * 3
    semantic = torch.randint(0, 5, (2, 32, 40), generator=g)
    semantic[:, :2] = 255
    ood = torch.zeros(2, 32, 40, dtype=torch.long)
    ood[:, 10:20, 5 + seed : 25 + seed] = 1
    ood[:, :2] = 255
    scores = torch.randn(2, 32, 40, generator=g) + 2.5 * (ood == 1)
    return {"logits": logits, "semantic": semantic, "ood": ood, "scores": scores}


def _metrics() -> dict[str, torch.nn.Module]:
    return {
        "pixel": PixelOODMetrics(num_bins=1 << 12, fallback_pixels=0),
        "pixel_exact": PixelOODMetrics(mode="exact"),
        "components": ComponentMetrics(threshold=1.0, min_pred_size=5, min_gt_size=5),
        "calibration": CalibrationMetrics(),
        "iou": SegmentationIoU(num_classes=5, class_names=list("abcde")),
        "misclassification": MisclassificationMetrics(num_bins=1 << 12),
        "misclassification_exact": MisclassificationMetrics(mode="exact"),
    }


def _run(metrics: dict, seeds: list[int]) -> dict[str, dict[str, float]]:
    for seed in seeds:
        d = _data(seed)
        metrics["pixel"].update(d["scores"], d["ood"])
        metrics["pixel_exact"].update(d["scores"], d["ood"])
        metrics["components"].update(d["scores"], d["ood"])
        metrics["calibration"].update(d["logits"], d["semantic"])
        metrics["iou"].update(d["logits"], d["semantic"])
        metrics["misclassification"].update(d["logits"], d["semantic"])
        metrics["misclassification_exact"].update(d["logits"], d["semantic"])
    out = {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}
    # raw states are local again after compute(); read the pooled counts inside a sync
    with metrics["components"].sync_context():
        out["component_counts"] = {
            f"{s}_{i}": float(v) for s in ("tp", "fn", "fp") for i, v in enumerate(getattr(metrics["components"], s))
        }
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        metrics = _metrics()
        # uneven split: rank 0 sees three batches, rank 1 one
        seeds = [0, 1, 2] if rank == 0 else [3]
        result = _run(metrics, seeds)
        result["computable"] = {"pixel": float(metrics["pixel"].is_computable())}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_sync_equals_single_process(tmp_path: Path) -> None:
    expected = _run(_metrics(), [0, 1, 2, 3])
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["computable"]["pixel"] == 1.0
        for name, values in expected.items():
            for key, value in values.items():
                assert math.isclose(got[name][key], value, rel_tol=1e-9, abs_tol=1e-12) or (
                    math.isnan(value) and math.isnan(got[name][key])
                ), (rank, name, key, got[name][key], value)
