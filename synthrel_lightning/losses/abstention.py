"""PEBAL's abstention ("gambler") loss for a segmenter with an extra abstention class.

Y. Tian, Y. Liu, G. Pang, F. Liu, Y. Chen, G. Carneiro, "Pixel-wise Energy-biased
Abstention Learning for Anomaly Segmentation on Complex Urban Driving Scenes" (PEBAL),
ECCV 2022 (github.com/tianyu0207/PEBAL, ``code/losses.py`` ``Gambler`` and
``code/engine/trainer.py``), after Z. Liu et al., "Deep Gamblers: Learning to Abstain with
Portfolio Theory", NeurIPS 2019.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.losses.base import LossTerm
from synthrel_lightning.losses.checks import check_logits_target, check_target_ids, masked_mean


def gaussian_blur(maps: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Blur each (H, W) map of ``maps`` (B,H,W) with a normalised Gaussian, reflect padding.

    The same filter as ``torchvision.transforms.GaussianBlur(kernel_size, sigma)`` on a tensor.
    """
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=maps.dtype, device=maps.device)
    pdf = torch.exp(-0.5 * (x / sigma).square())
    k1 = pdf / pdf.sum()
    kernel = (k1[:, None] * k1[None, :])[None, None]
    pad = kernel_size // 2
    padded = F.pad(maps[:, None], (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, kernel)[:, 0]


class GamblerLoss(LossTerm):
    """PEBAL's abstention loss (``Gambler``) on logits with K+1 channels, the last one the abstention class.

    With ``p = softmax(z)`` over all K+1 channels, the abstention probability ``a = p_{K+1}``
    is divided by a reward ``r = G * logsumexp(z_{1..K})^2`` (``G``: a 7x7 Gaussian blur of
    σ = 1 per image, reflect padding; the reward stays in the graph as in the authors'
    code), giving ``ã = a / r``. PEBAL's trainer calls the loss on the images without OOD
    pixels and, separately, on those with OOD pixels, and adds both:

    ``L = -mean_{I, clean images} log(p_y + ã) - mean_{I, OOD images} log(p_y + ã)
    - ood_reg * mean_{O x K} log(max(p_k + ã, 1e-7))``

    where the last mean runs over every (OOD pixel, in-distribution class) pair. Here an
    image counts as an OOD image when its target holds OOD pixels (254); PEBAL takes the
    flag from its data loader, which marks the images it pasted outliers into. An empty
    group contributes 0 (the reference code's mean of nothing would be NaN). The term
    reads the target's train ids as ids of the first K channels; use it with a segmenter
    that outputs K+1 channels and :class:`~synthrel_lightning.losses.EnergyHinge` with
    ``abstention_channel=True`` beside it (PEBAL trains no separate cross-entropy: this
    loss is its classification loss). Maps need at least ``kernel_size // 2 + 1`` pixels
    per side for the reflect padding.
    """

    def __init__(self, weight: float = 1.0, ood_reg: float = 0.1, kernel_size: int = 7, sigma: float = 1.0) -> None:
        super().__init__(weight)
        if ood_reg < 0:
            raise ValueError(f"GamblerLoss: ood_reg must be >= 0, got {ood_reg!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"GamblerLoss: kernel_size must be a positive odd number, got {kernel_size!r}")
        if not sigma > 0:
            raise ValueError(f"GamblerLoss: sigma must be > 0, got {sigma!r}")
        self.ood_reg = float(ood_reg)
        self.kernel_size = int(kernel_size)
        self.sigma = float(sigma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The abstention loss on logits (B,K+1,H,W) and targets (B,H,W)."""
        who = type(self).__name__
        check_logits_target(logits, target, who)
        num_classes = logits.shape[1] - 1
        if num_classes < 1:
            raise ValueError(f"{who}: logits need K+1 >= 2 channels (the last is the abstention class), got 1")
        pad = self.kernel_size // 2
        if min(logits.shape[2:]) <= pad:
            raise ValueError(
                f"{who}: maps of {tuple(logits.shape[2:])} pixels are too small for the {self.kernel_size}x"
                f"{self.kernel_size} reward blur; expected more than {pad} pixels per side"
            )
        check_target_ids(target, num_classes, who)
        probs = torch.softmax(logits, dim=1)
        class_probs, abstention = probs[:, :-1], probs[:, -1]
        reward = gaussian_blur(torch.logsumexp(logits[:, :-1], dim=1).square(), self.kernel_size, self.sigma)
        reserve = abstention / reward

        inlier = (target >= 0) & (target < num_classes)
        ood = target == OOD_ID
        ood_image = ood.flatten(1).any(dim=1)[:, None, None]
        safe = torch.where(inlier, target, torch.zeros_like(target)).long()
        p_target = class_probs.gather(1, safe[:, None])[:, 0]
        # Logs only where they are used, so that masked-out pixels cannot bring NaN gradients.
        log_in = torch.where(inlier, p_target + reserve, 1.0).log()
        loss = -masked_mean(log_in, inlier & ~ood_image) - masked_mean(log_in, inlier & ood_image)
        if self.ood_reg > 0:
            boosted = torch.where(ood[:, None], class_probs + reserve[:, None], 1.0).clamp_min(1e-7).log()
            mask = ood[:, None].expand_as(boosted)
            loss = loss - self.ood_reg * masked_mean(boosted, mask)
        return loss

    @property
    def name(self) -> str:
        """Name used in logged keys (``train/loss_gambler``) and ``loss_weights``."""
        return "gambler"


__all__ = ["GamblerLoss", "gaussian_blur"]
