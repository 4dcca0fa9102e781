"""Local temperature scaling (LTS): a small network predicting one temperature per pixel, as relis trains it.

Ding et al., "Local Temperature Scaling for Probability Calibration", ICCV 2021
(https://github.com/uncbiag/LTS), as relis uses it (de Jorge et al., CVPR 2023;
https://github.com/naver/relis, ``lts_network.py`` ``TemperatureModel`` and ``train_lts_network.py``).

The network: nine 5x5 convolutions (dilation 2, reflect padding 4, one output channel), seven
on the logits, ``conv_img`` on the image and ``param_img`` on the logits, all initialised to
zero. With ``s = sigmoid``:
``t1..t4 = conv1..4(z) + 1``; ``a = t1 s(p1) + t2 (1 - s(p1))``, ``b = t3 s(p2) + t4 (1 - s(p2))``
with ``p_i = param_i(z)``; ``T_z = a s(p3) + b (1 - s(p3))``; ``T_x = conv_img(x) + 1``;
``T = relu(T_z s(q) + T_x (1 - s(q)) + 1) + 1e-8`` with ``q = param_img(z)``; the calibrated
logits are ``z / T``. (At the zero initialisation T = 2 everywhere.) Parameter names are relis',
so its ``best_temperature_model_state_dict.pth`` loads.

Training (``train_lts_network.py``): at most ``max_images`` (500) images, a seeded shuffle of
which the first ``round(val_fraction * n)`` (20 %) validate and the rest train; Adam (lr 1e-4),
``epochs`` (10); per training image the pixel cross-entropy (void ignored) of the scaled logits
is back-propagated and the optimiser steps every ``batch_size`` (4) images and after the last;
every ``10 * batch_size`` images (and after the last) the mean validation NLL is measured and
the best network kept; training stops when it has not improved for more than
``3 * n_train / min(n_train, 10 * batch_size)`` checks. relis reshuffles the training images
every epoch (``DataLoader(shuffle=True)``); here they come in the stream's order, which the
caller's loader sets. relis feeds the image as ``ToTensor`` gives it ([0, 1] RGB); here it is
the image the segmenter gets (normalised as the data module normalises it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthrel_lightning.labels import OOD_ID, VOID_ID

_NAMES = ("conv1", "conv2", "conv3", "conv4", "param1", "param2", "param3", "conv_img", "param_img")


def _conv(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, 1, kernel_size=5, stride=1, padding=4, padding_mode="reflect", dilation=2, bias=True)


class LocalTemperatureNetwork(nn.Module):
    """Per-pixel temperature from logits (B,K,H,W) and image (B,3,H,W); zero-initialised (T = 2 everywhere)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        for name in _NAMES:
            setattr(self, f"temperature_level_2_{name}", _conv(3 if name == "conv_img" else self.num_classes))
        for p in self.parameters():
            nn.init.zeros_(p)

    def temperature(self, logits: Tensor, image: Tensor) -> Tensor:
        """The temperature map (B, 1, H, W)."""
        c = {name: getattr(self, f"temperature_level_2_{name}") for name in _NAMES}
        t1, t2, t3, t4 = (c[f"conv{i}"](logits) + 1.0 for i in range(1, 5))
        s1, s2, s3 = (torch.sigmoid(c[f"param{i}"](logits)) for i in range(1, 4))
        from_logits = (t1 * s1 + t2 * (1.0 - s1)) * s3 + (t3 * s2 + t4 * (1.0 - s2)) * (1.0 - s3)
        from_image = c["conv_img"](image) + 1.0
        mix = torch.sigmoid(c["param_img"](logits))
        return F.relu(from_logits * mix + from_image * (1.0 - mix) + 1.0) + 1e-8

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        """Calibrated logits ``logits / T(logits, image)``."""
        if image.shape[-2:] != logits.shape[-2:]:
            image = F.interpolate(image, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return logits / self.temperature(logits, image.to(logits.dtype))


@dataclass(frozen=True)
class LocalFit:
    """A trained LTS network and how training went."""

    network: LocalTemperatureNetwork
    best_nll: float
    initial_nll: float
    """Mean validation NLL of the uncalibrated logits (relis logs it before training)."""
    steps: int
    checks: int
    stopped_early: bool
    train_images: int
    val_images: int


def split_images(
    n: int, val_fraction: float = 0.2, max_images: int = 500, seed: int = 0
) -> tuple[list[int], list[int]]:
    """relis' split: a seeded shuffle, the first ``max_images``; the first ``round(val_fraction * n)`` validate."""
    order = np.random.default_rng(seed).permutation(n)[: min(n, int(max_images))]
    n_val = round(val_fraction * len(order))
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def _nll(logits: Tensor, target: Tensor) -> Tensor:
    target = target.long().masked_fill(target == OOD_ID, VOID_ID)
    return F.cross_entropy(logits, target, ignore_index=VOID_ID)


def fit_local_temperature(
    frames: Iterable[tuple[Tensor, Tensor, Tensor]] | Any,
    num_frames: int,
    num_classes: int,
    epochs: int = 10,
    lr: float = 1e-4,
    batch_size: int = 4,
    val_fraction: float = 0.2,
    max_images: int = 500,
    seed: int = 0,
) -> LocalFit:
    """Train an LTS network as relis does, on a re-iterable stream of ``(logits (1,K,H,W), target (1,H,W), image)``.

    The stream yields the ``num_frames`` frames in a fixed order on every pass (each pass runs
    the segmenter again, as relis' training loop does); frame ``i`` is the i-th of a pass.
    """
    if num_frames < 2:
        raise ValueError(f"local temperature scaling needs at least 2 images (train and validation), got {num_frames}")
    train, val = split_images(num_frames, val_fraction, max_images, seed)
    if not train or not val:
        raise ValueError(
            f"local temperature scaling: {num_frames} images give {len(train)} training and {len(val)} validation "
            f"images with val_fraction={val_fraction}; both must be non-empty"
        )
    train_set, val_set = set(train), set(val)

    def frames_of(keep: set[int]) -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        for i, (logits, target, image) in enumerate(frames):
            if i in keep:
                yield logits, target, image

    def val_nll(net: nn.Module | None) -> float:
        total = 0.0
        with torch.no_grad():
            for logits, target, image in frames_of(val_set):
                z = net(logits, image) if net is not None else logits
                total += float(_nll(z, target))
        return total / len(val)

    with torch.inference_mode(False), torch.enable_grad():
        first = next(iter(frames))[0]
        net = LocalTemperatureNetwork(num_classes).to(first.device)
        initial = val_nll(None)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        optimizer.zero_grad()
        best, best_nll = copy.deepcopy(net), 1e6
        n = len(train)
        per_check = 10 * batch_size if n > 10 * batch_size else n
        idle = steps = checks = 0
        for _ in range(epochs):
            for k, (logits, target, image) in enumerate(frames_of(train_set)):
                loss = _nll(net(logits.detach().clone(), image.detach().clone()), target)
                loss.backward()
                if (k + 1) % batch_size == 0 or k + 1 == n:
                    optimizer.step()
                    optimizer.zero_grad()
                    steps += 1
                if (k + 1) % (10 * batch_size) == 0 or k + 1 == n:
                    net.eval()
                    checks += 1
                    current = val_nll(net)
                    if current < best_nll:
                        best_nll, best, idle = current, copy.deepcopy(net), 0
                    else:
                        idle += 1
                        if idle > 3 * n / per_check:
                            return LocalFit(best.eval(), best_nll, initial, steps, checks, True, n, len(val))
                    net.train()
    return LocalFit(best.eval(), best_nll, initial, steps, checks, False, n, len(val))


__all__ = ["LocalFit", "LocalTemperatureNetwork", "fit_local_temperature", "split_images"]
