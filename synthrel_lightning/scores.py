"""Pixel-wise out-of-distribution scores computed from segmentation logits.

Every score maps logits ``(B, K, H, W)`` to a score map ``(B, H, W)`` where a
higher value means "more likely out-of-distribution":

* ``msp``: ``1 - max_k softmax(z)_k`` (maximum softmax probability, Hendrycks & Gimpel).
* ``max_logit``: ``-max_k z_k``.
* ``entropy``: entropy of ``softmax(z)`` in nats.
* ``energy``: ``-T * logsumexp(z / T)`` (Liu et al. 2020; ``-logsumexp(z)`` at ``T = 1``).
* ``rba``: ``-sum_k sigmoid(z_k)`` (Rejected by All).
* ``standardized_max_logit``: ``-(max_k z_k - mu_c) / sigma_c`` with ``c`` the
  predicted class and ``mu_c, sigma_c`` the mean and standard deviation of the
  max logit over training pixels predicted as ``c`` (Jung et al. 2021; the
  standardisation only, without their boundary suppression and dilated smoothing).

Scores are computed in float32 at least, whatever the logits' dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

SCORE_NAMES: tuple[str, ...] = ("msp", "max_logit", "entropy", "energy", "rba", "standardized_max_logit")
"""Names accepted by :func:`ood_score` and :func:`build_scorer`."""

STATELESS_SCORE_NAMES: tuple[str, ...] = SCORE_NAMES[:-1]
"""Scores that need nothing but the logits (all but ``standardized_max_logit``)."""


def _check_logits(logits: Tensor, who: str) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{who}: logits must be a (B, K, H, W) tensor, got {shape}")
    if not logits.is_floating_point():
        raise ValueError(f"{who}: logits must be floating point, got {logits.dtype}")
    # half precision loses the small differences between confident pixels that these scores rank
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _msp(z: Tensor) -> Tensor:
    return 1.0 - z.softmax(dim=1).amax(dim=1)


def _max_logit(z: Tensor) -> Tensor:
    return -z.amax(dim=1)


def _entropy(z: Tensor) -> Tensor:
    logp = z.log_softmax(dim=1)
    # xlogy-style guard: p * log p -> 0 where p underflows to 0
    return -(logp.exp() * logp).nan_to_num(nan=0.0).sum(dim=1)


def _energy(z: Tensor) -> Tensor:
    return -torch.logsumexp(z, dim=1)


def _rba(z: Tensor) -> Tensor:
    return -torch.sigmoid(z).sum(dim=1)


_STATELESS: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": _msp,
    "max_logit": _max_logit,
    "entropy": _entropy,
    "energy": _energy,
    "rba": _rba,
}


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown OOD score {name!r}; valid names: {', '.join(SCORE_NAMES)}")


def ood_score(name: str, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Score map ``(B, H, W)`` (higher = more OOD) of a stateless score on logits ``(B, K, H, W)``.

    The logits are divided by ``temperature`` first; ``energy`` is then multiplied
    by it (``-T logsumexp(z / T)``), which leaves its ranking unchanged.
    """
    if name not in SCORE_NAMES:
        raise _unknown(name)
    if name not in _STATELESS:
        raise ValueError(
            f"OOD score {name!r} needs class statistics collected on training data: use "
            f"build_scorer({name!r}), call update_statistics(logits, target) on training batches, then finalize()"
        )
    if not temperature > 0.0:
        raise ValueError(f"ood_score: temperature must be > 0, got {temperature!r}")
    z = _check_logits(logits, f"ood_score({name!r})")
    if temperature != 1.0:
        z = z / temperature
    score = _STATELESS[name](z)
    return score * temperature if name == "energy" and temperature != 1.0 else score


class OODScorer(nn.Module):
    """A stateless OOD score as a module: ``forward(logits (B,K,H,W)) -> scores (B,H,W)``."""

    def __init__(self, name: str = "energy", temperature: float = 1.0) -> None:
        super().__init__()
        if name not in _STATELESS:
            raise (
                _unknown(name)
                if name not in SCORE_NAMES
                else ValueError(f"OODScorer: {name!r} is not stateless; use build_scorer({name!r})")
            )
        if not temperature > 0.0:
            raise ValueError(f"OODScorer: temperature must be > 0, got {temperature!r}")
        self.name = name
        self.temperature = float(temperature)

    def forward(self, logits: Tensor) -> Tensor:
        """Score map ``(B, H, W)``, higher = more OOD."""
        return ood_score(self.name, logits, self.temperature)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, temperature={self.temperature}"


class StandardizedMaxLogit(nn.Module):
    """Standardized max logit: ``-(max z - mu_c) / sigma_c`` with per-class statistics from training data.

    Statistics are grouped by the *predicted* class by default (``group_by="prediction"``,
    as in the SML paper, which standardises by the class the network outputs at test
    time); ``group_by="label"`` groups by the ground-truth class instead. Pixels whose
    target is void, OOD or any id >= ``num_classes`` are skipped in both modes.
    The running sums and the final ``class_mean`` / ``class_std`` are buffers, so
    they travel in checkpoints. Collect the statistics on the same logits you score
    (the score is invariant to a global temperature only if both sides use it).
    """

    name = "standardized_max_logit"

    def __init__(self, num_classes: int = 19, group_by: Literal["prediction", "label"] = "prediction") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"StandardizedMaxLogit: num_classes must be >= 1, got {num_classes}")
        if group_by not in ("prediction", "label"):
            raise ValueError(f"StandardizedMaxLogit: group_by must be 'prediction' or 'label', got {group_by!r}")
        self.num_classes = int(num_classes)
        self.group_by = group_by
        self.register_buffer("class_mean", torch.zeros(num_classes))
        self.register_buffer("class_std", torch.ones(num_classes))
        self.register_buffer("finalized", torch.zeros((), dtype=torch.bool))
        # float64 sums: tens of millions of pixels per class would lose digits in float32
        self.register_buffer("_count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("_sum", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("_sumsq", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def update_statistics(self, logits: Tensor, target: Tensor | None = None) -> None:
        """Accumulate max-logit sums per class from a training batch (target (B,H,W) train ids, optional)."""
        z = _check_logits(logits, "StandardizedMaxLogit.update_statistics")
        if z.shape[1] != self.num_classes:
            raise ValueError(
                f"StandardizedMaxLogit: logits have {z.shape[1]} classes, expected num_classes={self.num_classes}"
            )
        max_logit, pred = z.amax(dim=1), z.argmax(dim=1)
        if target is None:
            if self.group_by == "label":
                raise ValueError("StandardizedMaxLogit: group_by='label' needs a target")
            valid = torch.ones_like(pred, dtype=torch.bool)
        else:
            if target.shape != pred.shape:
                raise ValueError(
                    f"StandardizedMaxLogit: target shape {tuple(target.shape)} does not match logits "
                    f"(B, H, W) = {tuple(pred.shape)}"
                )
            target = target.to(pred.device).long()
            valid = (target >= 0) & (target < self.num_classes)
        group = (pred if self.group_by == "prediction" else target)[valid]
        m = max_logit[valid].double()
        self._count.index_add_(0, group, torch.ones_like(m))
        self._sum.index_add_(0, group, m)
        self._sumsq.index_add_(0, group, m * m)

    @torch.no_grad()
    def finalize(self, min_count: int = 2) -> None:
        """Turn the accumulated sums into ``class_mean`` / ``class_std`` (classes with < min_count pixels fall back to the pooled statistics).

        Under ``torch.distributed`` the sums of every process are added first, so all
        processes end with the same statistics (every process must call this).
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for buf in (self._count, self._sum, self._sumsq):
                torch.distributed.all_reduce(buf)
        total = float(self._count.sum())
        if total < max(min_count, 2):
            raise RuntimeError(
                "StandardizedMaxLogit.finalize: no statistics collected; call update_statistics(logits, target) "
                "on training batches first"
            )
        pooled_mean = self._sum.sum() / total
        pooled_std = (self._sumsq.sum() / total - pooled_mean**2).clamp_min(0).sqrt()
        count = self._count.clamp_min(1)
        mean = self._sum / count
        std = (self._sumsq / count - mean**2).clamp_min(0).sqrt()
        few = self._count < min_count
        if bool(few.any()):
            warnings.warn(
                f"StandardizedMaxLogit: classes {few.nonzero().flatten().tolist()} have fewer than {min_count} "
                "pixels; using the pooled mean/std for them",
                stacklevel=2,
            )
            mean = torch.where(few, pooled_mean, mean)
            std = torch.where(few, pooled_std, std)
        # a constant max logit (std 0) would divide by zero
        std = std.clamp_min(1e-6)
        self.class_mean.copy_(mean.to(self.class_mean.dtype))
        self.class_std.copy_(std.to(self.class_std.dtype))
        self.finalized.fill_(True)

    def reset_statistics(self) -> None:
        """Forget the accumulated sums and the final statistics."""
        for b in (self._count, self._sum, self._sumsq, self.class_mean):
            b.zero_()
        self.class_std.fill_(1.0)
        self.finalized.fill_(False)

    def forward(self, logits: Tensor) -> Tensor:
        """Score map ``(B, H, W)``, higher = more OOD."""
        if not bool(self.finalized):
            raise RuntimeError(
                "StandardizedMaxLogit has no class statistics: call update_statistics(logits, target) on "
                "training batches and then finalize() (or load a checkpoint holding them) before scoring"
            )
        z = _check_logits(logits, "StandardizedMaxLogit")
        if z.shape[1] != self.num_classes:
            raise ValueError(
                f"StandardizedMaxLogit: logits have {z.shape[1]} classes, expected num_classes={self.num_classes}"
            )
        max_logit, pred = z.amax(dim=1), z.argmax(dim=1)
        mean = self.class_mean.to(z.dtype)[pred]
        std = self.class_std.to(z.dtype)[pred]
        return -(max_logit - mean) / std

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, group_by={self.group_by!r}"


def build_scorer(name: str, temperature: float = 1.0, num_classes: int = 19) -> nn.Module:
    """Scorer module for ``name``; ``temperature`` applies to stateless scores, ``num_classes`` to SML."""
    if name not in SCORE_NAMES:
        raise _unknown(name)
    if name == "standardized_max_logit":
        return StandardizedMaxLogit(num_classes=num_classes)
    return OODScorer(name, temperature=temperature)


__all__ = [
    "SCORE_NAMES",
    "STATELESS_SCORE_NAMES",
    "OODScorer",
    "StandardizedMaxLogit",
    "build_scorer",
    "ood_score",
]
