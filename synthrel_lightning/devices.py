"""Device names: one place that turns ``"auto"`` (or any torch device string) into a ``torch.device``."""

from __future__ import annotations

import torch

DEVICE_PREFIXES: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")
"""Device types accepted besides ``"auto"``."""


def resolve_device(device: str | torch.device = "auto", who: str = "device") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other names are checked and returned as ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not name.startswith(DEVICE_PREFIXES):
        raise ValueError(f"{who}: unknown device {device!r}; expected 'auto' or one of {', '.join(DEVICE_PREFIXES)}")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"{who}: invalid device {device!r} ({err})") from err


__all__ = ["DEVICE_PREFIXES", "resolve_device"]
