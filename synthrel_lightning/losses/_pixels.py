"""Pixel masks, masked means and shared per-pixel statistics used by the loss terms."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from synthrel_lightning.labels import OOD_ID, VOID_ID
from synthrel_lightning.losses.base import check_logits_target


class _LastResult:
    """A one-entry memo keyed on a tensor's identity and version, dropped when that tensor dies.

    The terms of one objective receive the same ``logits`` and ``target``; this lets them
    share the target check (a host sync) and ``logsumexp`` (full passes over the logits,
    forward and backward) without keeping anything alive after the step: the entry is
    cleared as soon as its key tensor is garbage-collected.
    """

    def __init__(self) -> None:
        self.key: tuple = ()
        self.values: tuple[Tensor, ...] = ()

    def _drop(self, ref: weakref.ref) -> None:
        if self.key and self.key[0] is ref:
            self.key, self.values = (), ()

    def get(self, key_tensor: Tensor, extra: tuple) -> tuple[Tensor, ...] | None:
        if not self.key:
            return None
        ref, version, other = self.key
        if ref() is not key_tensor or key_tensor._version != version or other != extra:
            return None
        return self.values

    def put(self, key_tensor: Tensor, extra: tuple, values: tuple[Tensor, ...]) -> None:
        self.key = (weakref.ref(key_tensor, self._drop), key_tensor._version, extra)
        self.values = values


_masks = _LastResult()
_lse = _LastResult()


def shared_logsumexp(logits: Tensor) -> Tensor:
    """``torch.logsumexp(logits, dim=1)``, computed once per logits tensor (and grad mode)."""
    extra = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    hit = _lse.get(logits, extra)
    if hit is not None:
        return hit[0]
    lse = torch.logsumexp(logits, dim=1)
    _lse.put(logits, extra, (lse,))
    return lse


def split_pixels(logits: Tensor, target: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """Validate ``logits``/``target`` and return boolean masks (inlier, OOD) of shape (B,H,W).

    Inliers carry a train id below K; OOD pixels carry 254; void (255) is in neither.
    """
    check_logits_target(logits, target, who)
    extra = (logits.shape[1],)
    hit = _masks.get(target, extra)
    if hit is not None:
        return hit[0], hit[1]
    inlier = (target >= 0) & (target < logits.shape[1])
    ood = target == OOD_ID
    bad = ~inlier & ~ood & (target != VOID_ID)
    if bool(bad.any()):
        raise ValueError(
            f"{who}: target holds values {sorted(target[bad].unique().tolist())[:10]} outside "
            f"0..{logits.shape[1] - 1}, {OOD_ID} (OOD) and {VOID_ID} (void)"
        )
    _masks.put(target, extra, (inlier, ood))
    return inlier, ood


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; an exact zero that keeps the graph when the mask is empty.

    Uses ``torch.where`` rather than boolean indexing so that no host sync is needed and
    masked-out pixels (whatever their value) never reach the result or its gradient.
    """
    total = torch.where(mask, values, values.new_zeros(())).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)
