"""Optimizer parameter groups as Mask2Former's training builds them (learning-rate multipliers, no decay on norms).

Mask2Former's ``build_optimizer`` (``train_net.py`` of github.com/facebookresearch/Mask2Former, kept by
RbA, github.com/NazirNayal8/RbA) gives every trainable parameter the base learning rate and weight
decay, then

- multiplies the learning rate by ``SOLVER.BACKBONE_MULTIPLIER`` for parameters of the backbone;
- sets the weight decay to 0 for ``relative_position_bias_table`` and ``absolute_pos_embed`` (Swin);
- sets it to ``SOLVER.WEIGHT_DECAY_NORM`` for parameters of normalization layers (batch, group,
  instance, layer and local-response norms) and to ``SOLVER.WEIGHT_DECAY_EMBED`` for ``nn.Embedding``.

:class:`ParamGroups` does the same over parameter names chosen by regular expressions; parameters
with equal settings share one group (the original makes one group per parameter; AdamW and SGD
update each element alike either way).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

#: Normalization layers whose parameters take ``norm_weight_decay`` (Mask2Former's ``norm_module_types``).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


class ParamGroups:
    """Per-parameter learning-rate multipliers and weight decays, as optimizer parameter groups.

    Args:
        lr_multipliers: regular expression over the full parameter name -> learning-rate multiplier
            (the first matching pattern applies; Mask2Former's backbone multiplier 0.1 is
            ``{"pixel_level_module\\.encoder\\.": 0.1}`` for :class:`~synthrel_lightning.models.HFMask2Former`).
        no_weight_decay: regular expressions over the parameter's own name (the last part) whose
            weight decay is 0 (Mask2Former: ``relative_position_bias_table``, ``absolute_pos_embed``).
        norm_weight_decay: weight decay of normalization-layer parameters (None: the optimizer's).
        embedding_weight_decay: weight decay of ``nn.Embedding`` weights (None: the optimizer's).

    Calling it on a module gives the groups (frozen parameters left out); :meth:`apply` then scales
    each group's learning rate once the optimizer holds its base value.
    """

    def __init__(
        self,
        lr_multipliers: dict[str, float] | None = None,
        no_weight_decay: list[str] | None = None,
        norm_weight_decay: float | None = None,
        embedding_weight_decay: float | None = None,
    ) -> None:
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        for pattern, factor in self.lr_multipliers.items():
            re.compile(pattern)
            if not factor >= 0:
                raise ValueError(f"ParamGroups: lr multiplier {pattern!r}: {factor} must be >= 0")
        self.no_weight_decay = [str(p) for p in (no_weight_decay or [])]
        self.norm_weight_decay = norm_weight_decay
        self.embedding_weight_decay = embedding_weight_decay

    def settings(self, module: nn.Module) -> dict[str, dict[str, float]]:
        """Per trainable parameter name, the settings that differ from the optimizer's (``lr_multiplier``,
        ``weight_decay``)."""
        names = [name for name, _ in module.named_parameters()]
        unused = [p for p in self.lr_multipliers if not any(re.search(p, n) for n in names)]
        if unused:
            raise ValueError(
                f"ParamGroups: lr_multipliers patterns {unused} match no parameter of {type(module).__name__} "
                f"(names look like {names[:2]})"
            )
        out: dict[str, dict[str, float]] = {}
        seen: set[int] = set()
        for module_name, sub in module.named_modules():
            for own, param in sub.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                name = f"{module_name}.{own}" if module_name else own
                hyper: dict[str, float] = {}
                for pattern, factor in self.lr_multipliers.items():
                    if re.search(pattern, name):
                        if factor != 1.0:
                            hyper["lr_multiplier"] = factor
                        break
                if any(re.search(p, own) for p in self.no_weight_decay):
                    hyper["weight_decay"] = 0.0
                if isinstance(sub, NORM_TYPES) and self.norm_weight_decay is not None:
                    hyper["weight_decay"] = float(self.norm_weight_decay)
                if isinstance(sub, nn.Embedding) and self.embedding_weight_decay is not None:
                    hyper["weight_decay"] = float(self.embedding_weight_decay)
                out[name] = hyper
        return out

    def __call__(self, module: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups of ``module``'s trainable parameters, one per distinct setting."""
        params = dict(module.named_parameters())
        groups: dict[tuple[tuple[str, float], ...], list[nn.Parameter]] = {}
        for name, hyper in self.settings(module).items():
            groups.setdefault(tuple(sorted(hyper.items())), []).append(params[name])
        return [{"params": ps, **dict(key)} for key, ps in groups.items()]

    @staticmethod
    def apply(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Multiply each group's learning rate by its ``lr_multiplier`` (before any scheduler is built)."""
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_multiplier", 1.0)
        return optimizer


__all__ = ["NORM_TYPES", "ParamGroups"]
