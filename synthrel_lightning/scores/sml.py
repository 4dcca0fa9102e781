"""Standardized max logits (SML; Jung et al., ICCV 2021, github.com/shjung13/Standardized-max-logits).

The score of a pixel predicted as class ``c`` is ``-(max_k z_k - mu_c) / sigma_c`` with ``mu_c`` and
``sigma_c`` the mean and (unbiased) standard deviation of the max logit over the training pixels the
*final* model, in eval mode, predicts as ``c``. The full method then replaces the standardized max
logits on prediction boundaries by the mean of their non-boundary neighbours (boundary suppression,
iteratively from a wide boundary band to a thin one) and smooths the map with a dilated Gaussian
(dilated smoothing). Statistics come from :meth:`OODSegmenter.compute_score_statistics`, the
:class:`~synthrel_lightning.callbacks.SMLStatistics` callback (at the end of ``fit``), or
``python -m synthrel_lightning sml_stats`` for any checkpoint.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.scores.pixel import check_logits
from synthrel_lightning.scores.protocol import StatefulScore

HOW_TO_COMPUTE = (
    "compute them with an eval-mode pass of the final model over training images: add the SMLStatistics "
    "callback to fit, call OODSegmenter.compute_score_statistics(train_loader), or run "
    "`python -m synthrel_lightning sml_stats --config <config.yaml> --ckpt_path <model.ckpt>` and load the "
    "checkpoint it writes"
)


def _morph(x: Tensor, footprint: Tensor, op: Literal["max", "min"]) -> Tensor:
    """Grey dilation (max) or erosion (min) of (B,1,H,W) with a flat footprint; outside pixels are ignored."""
    kh, kw = footprint.shape
    fill = float("-inf") if op == "max" else float("inf")
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), value=fill)
    patches = F.unfold(padded, (kh, kw))  # (B, kh*kw, H*W)
    patches = patches[:, footprint.flatten().bool().to(patches.device)]
    out = patches.amax(1) if op == "max" else patches.amin(1)
    return out.view_as(x)


def diamond(radius: int) -> Tensor:
    """The L1 ball of ``radius`` (a single 1 dilated ``radius`` times by the 4-neighbour cross)."""
    r = torch.arange(-radius, radius + 1)
    return ((r[:, None].abs() + r[None, :].abs()) <= radius).float()


def prediction_boundaries(prediction: Tensor) -> Tensor:
    """(B,1,H,W) 1 where the cross-dilation and the 3x3-erosion of the prediction map differ."""
    p = prediction.float().unsqueeze(1)
    return (_morph(p, diamond(1), "max") != _morph(p, torch.ones(3, 3), "min")).float()


def gaussian_kernel(size: int = 7, sigma: float = 1.0) -> Tensor:
    """Normalised ``size`` x ``size`` Gaussian."""
    c = (size - 1) / 2
    x = torch.arange(size, dtype=torch.float64)
    g = torch.exp(-((x[:, None] - c) ** 2 + (x[None, :] - c) ** 2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    return (g / g.sum()).float()


def boundary_suppression(
    score: Tensor, prediction: Tensor, boundary_width: int = 4, boundary_iteration: int = 4
) -> Tensor:
    """Replace ``score`` (B,H,W) on prediction boundaries by the mean of non-boundary 3x3 neighbours, iteratively."""
    if boundary_iteration == 0:
        return score
    if boundary_width % boundary_iteration != 0:
        raise ValueError(
            f"boundary_suppression: boundary_width ({boundary_width}) must be a multiple of "
            f"boundary_iteration ({boundary_iteration})"
        )
    step = boundary_width // boundary_iteration
    boundaries = prediction_boundaries(prediction)
    ones = torch.ones(1, 1, 3, 3, device=score.device, dtype=score.dtype)
    out = score.unsqueeze(1)
    for it in range(boundary_iteration):
        width = 0 if (boundary_width == 0 or it == boundary_iteration - 1) else boundary_width - step * it - 1
        expanded = boundaries if width == 0 else _morph(boundaries, diamond(width), "max")
        inside = (expanded == 0).to(score.dtype)
        total = F.conv2d(F.pad(out * inside, (1, 1, 1, 1), mode="replicate"), ones)
        count = F.conv2d(F.pad(inside, (1, 1, 1, 1), mode="replicate"), ones).long()
        mean = torch.where(count == 0, out, total / count)
        out = torch.where(inside == 0, mean, out)
    return out.squeeze(1)


def dilated_smoothing(score: Tensor, kernel_size: int = 7, dilation: int = 6, sigma: float = 1.0) -> Tensor:
    """Gaussian smoothing of ``score`` (B,H,W) with a dilated kernel (replicate padding)."""
    pad = dilation * (kernel_size // 2)
    kernel = gaussian_kernel(kernel_size, sigma).to(score)[None, None]
    return F.conv2d(F.pad(score.unsqueeze(1), (pad,) * 4, mode="replicate"), kernel, dilation=dilation).squeeze(1)


class StandardizedMaxLogit(StatefulScore):
    """Standardized max logit with boundary suppression and dilated smoothing (Jung et al. 2021).

    Args:
        num_classes: K.
        group_by: ``"prediction"`` (the paper: by the class the model predicts; pixels labelled
            OOD are skipped) or ``"label"`` (by the ground-truth class; void/OOD skipped).
        boundary_suppression: replace the values on prediction boundaries (width
            ``boundary_width``, in ``boundary_iteration`` steps; the authors' 4 / 4).
        dilated_smoothing: smooth with a ``kernel_size`` Gaussian (sigma 1) dilated by ``dilation``
            (the authors' 7 / 6).
    """

    name = "standardized_max_logit"
    class_mean: Tensor
    class_std: Tensor
    finalized: Tensor
    _count: Tensor
    _sum: Tensor
    _sumsq: Tensor

    def __init__(
        self,
        num_classes: int = 19,
        group_by: Literal["prediction", "label"] = "prediction",
        boundary_suppression: bool = True,
        boundary_width: int = 4,
        boundary_iteration: int = 4,
        dilated_smoothing: bool = True,
        kernel_size: int = 7,
        dilation: int = 6,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"StandardizedMaxLogit: num_classes must be >= 1, got {num_classes}")
        if group_by not in ("prediction", "label"):
            raise ValueError(f"StandardizedMaxLogit: group_by must be 'prediction' or 'label', got {group_by!r}")
        if boundary_iteration and boundary_width % boundary_iteration != 0:
            raise ValueError(
                f"StandardizedMaxLogit: boundary_width ({boundary_width}) must be a multiple of "
                f"boundary_iteration ({boundary_iteration})"
            )
        self.num_classes = int(num_classes)
        self.group_by = group_by
        self.boundary_suppression = bool(boundary_suppression)
        self.boundary_width = int(boundary_width)
        self.boundary_iteration = int(boundary_iteration)
        self.dilated_smoothing = bool(dilated_smoothing)
        self.kernel_size = int(kernel_size)
        self.dilation = int(dilation)
        self.register_buffer("class_mean", torch.zeros(num_classes))
        self.register_buffer("class_std", torch.ones(num_classes))
        self.register_buffer("finalized", torch.zeros((), dtype=torch.bool))
        # float64 sums: tens of millions of pixels per class would lose digits in float32
        self.register_buffer("_count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("_sum", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("_sumsq", torch.zeros(num_classes, dtype=torch.float64))

    def _check_classes(self, z: Tensor) -> None:
        if z.shape[1] != self.num_classes:
            raise ValueError(
                f"StandardizedMaxLogit: logits have {z.shape[1]} classes, expected num_classes={self.num_classes}"
            )

    @property
    def is_ready(self) -> bool:
        """Whether class statistics are available."""
        return bool(self.finalized)

    @torch.no_grad()
    def update_statistics(self, class_scores: Tensor, target: Tensor | None = None) -> None:
        """Accumulate max-logit sums per class from raw logits of training images (eval mode)."""
        z = check_logits(class_scores, "StandardizedMaxLogit.update_statistics")
        self._check_classes(z)
        max_logit, pred = z.amax(dim=1), z.argmax(dim=1)
        if target is None:
            if self.group_by == "label":
                raise ValueError("StandardizedMaxLogit: group_by='label' needs a target")
            valid = torch.ones_like(pred, dtype=torch.bool)
            grouping = pred
        else:
            if target.shape != pred.shape:
                raise ValueError(
                    f"StandardizedMaxLogit: target shape {tuple(target.shape)} does not match logits "
                    f"(B, H, W) = {tuple(pred.shape)}"
                )
            target = target.to(pred.device).long()
            valid = target != OOD_ID if self.group_by == "prediction" else (target >= 0) & (target < self.num_classes)
            grouping = pred if self.group_by == "prediction" else target
        group = grouping[valid]
        m = max_logit[valid].double()
        self._count.index_add_(0, group, torch.ones_like(m))
        self._sum.index_add_(0, group, m)
        self._sumsq.index_add_(0, group, m * m)

    @torch.no_grad()
    def finalize(self, min_count: int = 2) -> None:
        """Turn the sums into ``class_mean`` / unbiased ``class_std`` (classes with < min_count pixels: pooled).

        Under ``torch.distributed`` the sums of every process are added first (every process must call this).
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for buf in (self._count, self._sum, self._sumsq):
                torch.distributed.all_reduce(buf)
        total = float(self._count.sum())
        if total < max(min_count, 2):
            raise RuntimeError(f"StandardizedMaxLogit.finalize: no statistics collected; {HOW_TO_COMPUTE}")

        def mean_std(count: Tensor, s: Tensor, sq: Tensor) -> tuple[Tensor, Tensor]:
            mean = s / count.clamp_min(1)
            var = (sq - count * mean**2) / (count - 1).clamp_min(1)
            return mean, var.clamp_min(0).sqrt()

        mean, std = mean_std(self._count, self._sum, self._sumsq)
        few = self._count < min_count
        if bool(few.any()):
            warnings.warn(
                f"StandardizedMaxLogit: classes {few.nonzero().flatten().tolist()} have fewer than {min_count} "
                "pixels; using the pooled mean/std for them",
                stacklevel=2,
            )
            pooled_mean, pooled_std = mean_std(self._count.sum(), self._sum.sum(), self._sumsq.sum())
            mean = torch.where(few, pooled_mean, mean)
            std = torch.where(few, pooled_std, std)
        # a constant max logit (std 0) would divide by zero
        self.class_mean.copy_(mean.to(self.class_mean.dtype))
        self.class_std.copy_(std.clamp_min(1e-6).to(self.class_std.dtype))
        self.finalized.fill_(True)

    def reset_statistics(self) -> None:
        """Forget the accumulated sums and the final statistics."""
        for b in (self._count, self._sum, self._sumsq, self.class_mean):
            b.zero_()
        self.class_std.fill_(1.0)
        self.finalized.fill_(False)

    def standardized(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Standardized max logits (B,H,W) (higher = more in-distribution) and the prediction."""
        z = check_logits(logits, "StandardizedMaxLogit")
        self._check_classes(z)
        max_logit, pred = z.amax(dim=1), z.argmax(dim=1)
        return (max_logit - self.class_mean.to(z.dtype)[pred]) / self.class_std.to(z.dtype)[pred], pred

    def forward(self, logits: Tensor) -> Tensor:
        """Score map ``(B, H, W)``, higher = more OOD."""
        if not self.is_ready:
            raise RuntimeError(f"StandardizedMaxLogit has no class statistics: {HOW_TO_COMPUTE}")
        sml, pred = self.standardized(logits)
        if self.boundary_suppression:
            sml = boundary_suppression(sml, pred, self.boundary_width, self.boundary_iteration)
        if self.dilated_smoothing:
            sml = dilated_smoothing(sml, self.kernel_size, self.dilation)
        return -sml

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, group_by={self.group_by!r}, "
            f"boundary_suppression={self.boundary_suppression}, dilated_smoothing={self.dilated_smoothing}"
        )


__all__ = [
    "HOW_TO_COMPUTE",
    "StandardizedMaxLogit",
    "boundary_suppression",
    "dilated_smoothing",
    "gaussian_kernel",
    "prediction_boundaries",
]
