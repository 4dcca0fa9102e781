"""What one run of the fit benchmark depends on: the modes, SegFormer-B0's shape, the configuration, presets."""

from __future__ import annotations

import dataclasses
from typing import Any

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


__all__ = ["FitBenchConfig", "MODES", "PRESETS", "SEGFORMER_B0"]
