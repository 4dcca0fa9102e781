"""Calibrators applied at test time: global, clustered (per image) and local (per pixel) temperature scaling.

Each maps a model and a batch of images to calibrated class scores (B, K, H, W) in one forward
pass, and round-trips through plain values stored in a calibrated checkpoint's ``calibration``
entry (:func:`calibrator_from_state`; tensors and plain values only, so the checkpoint loads
with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from synthrel_lightning.calibration.clustered import ClusteredTemperature
from synthrel_lightning.calibration.features import FeatureTap, forward_with_features
from synthrel_lightning.calibration.local import LocalTemperatureNetwork

CALIBRATION_METHODS: tuple[str, ...] = ("nll", "ece_grid", "clustered", "lts")
"""``calibrate`` methods: one global T (NLL or ECE grid), one T per image cluster, one T per pixel."""


def _raw_logits(module: nn.Module, images: Tensor, size: tuple[int, int] | None) -> Tensor:
    forward = getattr(module, "raw_logits", None) or module
    logits = forward(images)
    if isinstance(logits, dict):
        logits = logits["out"]
    if size is not None and logits.shape[-2:] != size:
        logits = nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.float()


class GlobalCalibrator:
    """One temperature for every pixel."""

    method = "global"

    def __init__(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def __call__(self, module: nn.Module, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Calibrated class scores of ``images`` (unscaled logits divided by T)."""
        return self.scores(module, images, size)[1]

    def scores(self, module: nn.Module, images: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """The unscaled class scores of ``images`` and the calibrated ones, from one forward pass."""
        raw = _raw_logits(module, images, size)
        return raw, raw / self.temperature

    def state(self) -> dict[str, Any]:
        """Plain values for the checkpoint."""
        return {"kind": "global", "temperature": self.temperature}


class ClusteredCalibrator:
    """The temperature of each image's cluster (features read from the backbone in the same forward pass)."""

    method = "clustered"

    def __init__(self, clusters: ClusteredTemperature) -> None:
        self.clusters = clusters

    def __call__(self, module: nn.Module, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Calibrated class scores of ``images``."""
        return self.scores(module, images, size)[1]

    def scores(self, module: nn.Module, images: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """The unscaled class scores of ``images`` and the calibrated ones, from one forward pass."""
        with FeatureTap(module, self.clusters.feature_module) as tap:
            logits, features = forward_with_features(module, images, tap, size)
        t = self.clusters.image_temperatures(features).to(logits)
        return logits, logits / t.view(-1, 1, 1, 1)

    def state(self) -> dict[str, Any]:
        """Plain values for the checkpoint."""
        return {"kind": "clustered", **self.clusters.as_dict()}


class LocalCalibrator:
    """A per-pixel temperature from the LTS network."""

    method = "lts"

    def __init__(self, network: LocalTemperatureNetwork) -> None:
        self.network = network.eval()

    def __call__(self, module: nn.Module, images: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Calibrated class scores of ``images``."""
        return self.scores(module, images, size)[1]

    def scores(self, module: nn.Module, images: Tensor, size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """The unscaled class scores of ``images`` and the calibrated ones, from one forward pass."""
        logits = _raw_logits(module, images, size)
        self.network.to(logits.device)
        with torch.no_grad():
            return logits, self.network(logits, images)

    def state(self) -> dict[str, Any]:
        """Plain values for the checkpoint."""
        weights = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        return {"kind": "lts", "num_classes": self.network.num_classes, "network": weights}


Calibrator = GlobalCalibrator | ClusteredCalibrator | LocalCalibrator


def calibrator_from_state(state: dict[str, Any], where: str = "calibration") -> Calibrator:
    """The calibrator a checkpoint's ``calibration`` entry describes (a ValueError naming ``where`` otherwise)."""
    kind = state.get("kind", "global") if isinstance(state, dict) else None
    if kind == "global":
        if "temperature" not in state:
            raise ValueError(f"{where}: no 'temperature' in the calibration entry")
        return GlobalCalibrator(float(state["temperature"]))
    if kind == "clustered":
        return ClusteredCalibrator(ClusteredTemperature.from_dict(state))
    if kind == "lts":
        net = LocalTemperatureNetwork(int(state["num_classes"]))
        try:
            net.load_state_dict(state["network"])
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"{where}: the LTS network weights do not match its structure: {err}") from err
        return LocalCalibrator(net)
    raise ValueError(f"{where}: unknown calibration kind {kind!r}; expected one of global, clustered, lts")


__all__ = [
    "CALIBRATION_METHODS",
    "Calibrator",
    "ClusteredCalibrator",
    "GlobalCalibrator",
    "LocalCalibrator",
    "calibrator_from_state",
]
