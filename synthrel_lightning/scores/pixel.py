"""Stateless OOD scores: functions of a model's per-pixel class scores ``(B, K, H, W)``.

On per-pixel logits ``z`` (any segmenter):

* ``msp``: ``1 - max_k softmax(z)_k`` (maximum softmax probability, Hendrycks & Gimpel 2017).
* ``max_logit``: ``-max_k z_k`` (Hendrycks et al. 2022).
* ``entropy``: entropy of ``softmax(z)`` in nats.
* ``energy``: ``-T * logsumexp(z / T)`` (Liu et al. 2020; ``-logsumexp(z)`` at ``T = 1``).
* ``sigmoid_sum``: ``-Σ_k sigmoid(z_k)``. An extension of this package, not a published method:
  RbA's form transposed to per-pixel logits.

On the per-pixel class scores ``l_k = Σ_q softmax(c_q)[k] σ(m_q)`` of a mask-classification model
(Mask2Former, OneFormer; the no-object class dropped):

* ``rba``: ``-Σ_k tanh(l_k)`` (Rejected by All, Nayal et al. ICCV 2023, github.com/NazirNayal8/RbA).
* ``mask2anomaly``: ``-max_k l_k`` (Mask2Anomaly, Rai et al. ICCV 2023).

Scores are computed in float32 at least, whatever the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from synthrel_lightning.scores.names import unknown_score
from synthrel_lightning.scores.protocol import OODScore, OutputKind


def check_logits(logits: Tensor, who: str) -> Tensor:
    """``logits`` as a floating (B,K,H,W) tensor in float32 at least; a clear error otherwise."""
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


def _sigmoid_sum(z: Tensor) -> Tensor:
    return -torch.sigmoid(z).sum(dim=1)


def _rba(scores: Tensor) -> Tensor:
    return -torch.tanh(scores).sum(dim=1)


def _mask2anomaly(scores: Tensor) -> Tensor:
    return -scores.amax(dim=1)


STATELESS: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": _msp,
    "max_logit": _max_logit,
    "entropy": _entropy,
    "energy": _energy,
    "sigmoid_sum": _sigmoid_sum,
    "rba": _rba,
    "mask2anomaly": _mask2anomaly,
}
"""The stateless scores by name."""

REQUIRES: dict[str, OutputKind] = {"rba": "mask_classification", "mask2anomaly": "mask_classification"}
"""Scores defined on one output kind only (the others apply to any per-pixel class scores)."""

RAW_INPUT = frozenset({"rba", "mask2anomaly"})
"""Scores their authors define on the model's raw class scores (never temperature-scaled)."""


def stateless_score(name: str, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Score map ``(B, H, W)`` of the stateless score ``name``; inputs are divided by ``temperature`` first."""
    if not temperature > 0.0:
        raise ValueError(f"ood_score: temperature must be > 0, got {temperature!r}")
    z = check_logits(logits, f"ood_score({name!r})")
    if temperature != 1.0:
        z = z / temperature
    score = STATELESS[name](z)
    return score * temperature if name == "energy" and temperature != 1.0 else score


class OODScorer(OODScore):
    """A stateless OOD score as a module: ``forward(class_scores (B,K,H,W)) -> scores (B,H,W)``."""

    def __init__(self, name: str = "energy", temperature: float = 1.0) -> None:
        super().__init__()
        if name not in STATELESS:
            raise unknown_score(name, "OODScorer")
        if not temperature > 0.0:
            raise ValueError(f"OODScorer: temperature must be > 0, got {temperature!r}")
        self._name = name
        self.temperature = float(temperature)

    @property
    def name(self) -> str:  # type: ignore[override]
        """The score's name."""
        return self._name

    @property
    def requires(self) -> OutputKind | None:  # type: ignore[override]
        """The output kind the score is defined on (``None``: any)."""
        return REQUIRES.get(self._name)

    @property
    def uses_temperature(self) -> bool:  # type: ignore[override]
        """Whether the score reads temperature-scaled inputs."""
        return self._name not in RAW_INPUT

    def forward(self, logits: Tensor) -> Tensor:
        """Score map ``(B, H, W)``, higher = more OOD."""
        return stateless_score(self._name, logits, self.temperature)

    def extra_repr(self) -> str:
        return f"name={self._name!r}, temperature={self.temperature}"


__all__ = ["REQUIRES", "STATELESS", "OODScorer", "check_logits", "stateless_score"]
