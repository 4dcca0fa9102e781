"""Per-pixel statistics of one (logits, target) pair, computed once and shared by the loss terms.

Most per-pixel loss terms of this package are functions of a few per-pixel reductions of the
logits over the class axis (logsumexp, max, mean, sum of sigmoids, the target's logit) and of
the inlier/OOD masks. Computing those once, in one autograd node, replaces one or more passes
over the full (B, K, H, W) logits per term, forward and backward, by a handful of passes
for the whole objective: the backward of the node builds the logits' gradient in one go
from the (B, H, W) gradients of the statistics.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.losses.checks import check_logits_target, check_target_ids, invalid_ids

#: Names of the statistics a :class:`PixelStats` can hold (a term's ``stats_needed``).
STAT_NAMES = frozenset({"lse", "max", "mean", "sigmoid_sum", "target_logit"})


class _ClassReductions(torch.autograd.Function):
    """(logsumexp, max, mean, Σ sigmoid, z_target) over dim 1, with one fused backward.

    Unrequested outputs are empty, non-differentiable tensors. The max's gradient goes to
    the first maximal class (ties have measure zero for real-valued logits).
    """

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        target_index: Tensor | None,
        want_lse: bool,
        want_max: bool,
        want_mean: bool,
        want_sig: bool,
    ):
        ctx.set_materialize_grads(False)
        outputs: list[Tensor | None] = [None] * 5  # lse, max, mean, Σ sigmoid, z_target
        probs = sig = argmax = None
        if want_lse or want_max:
            mx, argmax = logits.max(dim=1, keepdim=True)
            if want_lse:
                probs = torch.softmax(logits, dim=1)
                # The max class has probability >= 1/K, so its log is well conditioned.
                outputs[0] = (mx - probs.gather(1, argmax).log()).squeeze(1)
            if want_max:
                outputs[1] = mx.squeeze(1)
            else:
                argmax = None
        if want_mean:
            outputs[2] = logits.mean(dim=1)
        if want_sig:
            sig = torch.sigmoid(logits)
            outputs[3] = sig.sum(dim=1)
        if target_index is not None:
            outputs[4] = logits.gather(1, target_index.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(probs, sig, argmax, target_index)
        ctx.num_classes = logits.shape[1]
        ctx.shape = logits.shape
        unused = [i for i, o in enumerate(outputs) if o is None]
        for i in unused:
            outputs[i] = logits.new_empty(0)
        ctx.mark_non_differentiable(*[outputs[i] for i in unused])
        return tuple(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lse, g_max, g_mean, g_sig, g_zt):
        probs, sig, argmax, target_index = ctx.saved_tensors
        g_lse = g_lse if probs is not None else None
        g_sig = g_sig if sig is not None else None
        g_max = g_max if argmax is not None else None
        g_zt = g_zt if target_index is not None else None
        dense = [g for g in (g_lse, g_mean, g_sig) if g is not None]
        sparse = [g for g in (g_max, g_zt) if g is not None]
        if not dense and not sparse:
            return None, None, None, None, None, None
        ref = (dense + sparse)[0]
        # The mean's gradient 1/K per class rides along in the first dense kernel.
        offset = (g_mean / ctx.num_classes).unsqueeze(1) if g_mean is not None else None
        grad = None
        if g_lse is not None:  # d lse / dz = softmax(z)
            grad = probs * g_lse.unsqueeze(1) if offset is None else torch.addcmul(offset, probs, g_lse.unsqueeze(1))
            offset = None
        if g_sig is not None:  # d sigmoid / dz = s (1 - s)
            part = torch.ops.aten.sigmoid_backward(g_sig.unsqueeze(1).expand(ctx.shape), sig)
            grad = part if grad is None else grad.add_(part)
        if offset is not None:
            grad = offset.expand(ctx.shape).clone() if grad is None else grad.add_(offset)
        if grad is None:
            grad = ref.new_zeros(ctx.shape)
        if g_max is not None:
            grad.scatter_add_(1, argmax, g_max.unsqueeze(1))
        if g_zt is not None:
            grad.scatter_add_(1, target_index.unsqueeze(1), g_zt.unsqueeze(1))
        return grad, None, None, None, None, None


class PixelStats:
    """Masks and per-pixel class reductions of ``logits`` (B,K,H,W) for the target (B,H,W).

    Attributes (each (B,H,W); a statistic not named in ``needs`` is ``None``):
    ``inlier``/``ood`` boolean masks (train id < K / 254; void 255 is in neither),
    ``lse`` = logsumexp over classes, ``max`` = max logit, ``mean`` = mean logit,
    ``sigmoid_sum`` = Σ_k sigmoid(z_k), ``target_logit`` = the logit of the target class on
    inliers (class 0 elsewhere, where it is masked out by every term).

    Args:
        logits, target: as a :class:`LossTerm` receives them.
        needs: names from :data:`STAT_NAMES` to compute.
        who: name used in error messages.
        validate: check the target's values now (one host sync); with ``False`` call
            :meth:`validate` once the objective is assembled, so that the check does not
            stall the queue of kernels in the middle of the step.
        fused: compute the statistics in one autograd node with a hand-written backward
            (fewest passes over the logits in eager mode); ``False`` uses plain
            differentiable ops, which ``torch.compile`` fuses by itself.
    """

    def __init__(
        self,
        logits: Tensor,
        target: Tensor,
        needs: Iterable[str] = STAT_NAMES,
        who: str = "PixelStats",
        validate: bool = True,
        fused: bool = True,
    ) -> None:
        check_logits_target(logits, target, who)
        needs = frozenset(needs)
        unknown = needs - STAT_NAMES
        if unknown:
            raise ValueError(
                f"{who}: unknown pixel statistics {sorted(unknown)}; expected names from {sorted(STAT_NAMES)}"
            )
        self.logits = logits
        self.target = target
        self.who = who
        self.num_classes = int(logits.shape[1])
        self.inlier = (target >= 0) & (target < self.num_classes)
        self.ood = target == OOD_ID
        self._bad = invalid_ids(target, self.num_classes)
        self._validated = False
        #: A 0-d boolean tensor, True when the target is valid; state updates (estimated energy
        #: margins) are gated on it while the check itself is deferred.
        self.valid: Tensor | None = None
        if validate:
            self.validate()
        else:
            self.valid = ~self._bad.any()
        dtype = logits.dtype
        self._inverse_counts = {
            "inlier": self.inlier.sum().clamp_min(1).to(dtype).reciprocal(),
            "ood": self.ood.sum().clamp_min(1).to(dtype).reciprocal(),
        }
        safe = None
        if "target_logit" in needs:
            # Non-inlier targets point at class 0; every term masks those pixels out.
            safe = torch.where(self.inlier, target, torch.zeros_like(target)).long()
        self.safe_target = safe
        self.lse: Tensor | None = None
        self.max: Tensor | None = None
        self.mean: Tensor | None = None
        self.sigmoid_sum: Tensor | None = None
        self.target_logit: Tensor | None = None
        if fused:
            outs = _ClassReductions.apply(
                logits, safe, "lse" in needs, "max" in needs, "mean" in needs, "sigmoid_sum" in needs
            )
            for name, value in zip(("lse", "max", "mean", "sigmoid_sum", "target_logit"), outs):
                if name in needs:
                    setattr(self, name, value)
        else:
            if "lse" in needs:
                self.lse = torch.logsumexp(logits, dim=1)
            if "max" in needs:
                self.max = logits.amax(dim=1)
            if "mean" in needs:
                self.mean = logits.mean(dim=1)
            if "sigmoid_sum" in needs:
                self.sigmoid_sum = torch.sigmoid(logits).sum(dim=1)
            if safe is not None:
                self.target_logit = logits.gather(1, safe.unsqueeze(1)).squeeze(1)

    def validate(self) -> None:
        """Raise a clear ``ValueError`` if the target holds values other than 0..K-1, 254 and 255."""
        if self._validated:
            return
        check_target_ids(self.target, self.num_classes, self.who)
        self._validated = True

    def inlier_mean(self, values: Tensor) -> Tensor:
        """Mean of per-pixel ``values`` over inliers (an exact, graph-keeping zero without any)."""
        # torch.where, not a product with the mask: masked-out pixels never reach the result or its gradient.
        return torch.where(self.inlier, values, 0.0).sum() * self._inverse_counts["inlier"]

    def ood_mean(self, values: Tensor) -> Tensor:
        """Mean of per-pixel ``values`` over OOD pixels (an exact, graph-keeping zero without any)."""
        return torch.where(self.ood, values, 0.0).sum() * self._inverse_counts["ood"]

    @property
    def has_ood(self) -> Tensor:
        """0-d boolean tensor: whether the batch holds OOD pixels (no host sync)."""
        return self.ood.any()

    def need(self, name: str) -> Tensor:
        """The statistic ``name``, or a clear error if it was not requested."""
        value = getattr(self, name, None) if name in STAT_NAMES else None
        if value is None:
            raise KeyError(f"{self.who}: pixel statistic {name!r} was not computed; add it to the term's stats_needed")
        return value


__all__ = ["STAT_NAMES", "PixelStats"]
