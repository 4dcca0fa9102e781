"""The deployable graph: a trained OOD segmenter with its temperature and OOD score folded in.

A perception stack runs one graph: image in; temperature-scaled class scores, the predicted
class and the OOD score out. :class:`DeployableSegmenter` is that graph as an ``nn.Module``,
traced by :mod:`synthrel_lightning.deploy.export` into ONNX or TorchScript.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from synthrel_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from synthrel_lightning.models.mask_classification import run_segmenter
from synthrel_lightning.models.outputs import class_scores_at, identify_output
from synthrel_lightning.scores.protocol import OODScore

InputFormat = Literal["normalized", "uint8"]
OUTPUT_NAMES = ("class_scores", "prediction", "ood_score")
"""The exported graph's outputs, in order."""


class DeployableSegmenter(nn.Module):
    """``image -> (class_scores, prediction, ood_score)`` of an :class:`~synthrel_lightning.models.OODSegmenter`.

    Args:
        module: the trained OOD segmenter (its ``temperature`` buffer and OOD score are used as they are).
        input_format: ``"normalized"``: float32 (B,3,H,W) ImageNet-normalised images, as the module's
            ``forward`` takes them; ``"uint8"``: raw RGB (B,3,H,W) 0..255 (float or uint8), normalised
            inside the graph.

    Outputs: ``class_scores`` (B,K,H,W) float32, the temperature-scaled per-pixel class scores
    (logits, or ``l_k`` of a mask-classification model) at the input size; ``prediction`` (B,H,W)
    int64, their argmax; ``ood_score`` (B,H,W) float32, higher = more OOD.
    """

    segmenter: nn.Module
    scorer: OODScore
    temperature: Tensor
    mean: Tensor
    inv_std: Tensor

    def __init__(self, module: nn.Module, input_format: InputFormat = "normalized") -> None:
        super().__init__()
        if input_format not in ("normalized", "uint8"):
            raise ValueError(f"DeployableSegmenter: input_format must be 'normalized' or 'uint8', got {input_format!r}")
        for attr in ("segmenter", "scorer", "temperature"):
            if not hasattr(module, attr):
                raise TypeError(
                    f"DeployableSegmenter: {type(module).__name__} has no {attr!r}; expected an OODSegmenter"
                )
        if getattr(module, "calibrator", None) is not None:
            raise ValueError(
                "DeployableSegmenter: the module carries a clustered or local calibrator, which the exported graph "
                "cannot hold; export a module calibrated with one temperature (calibrate --method ece_grid|nll)"
            )
        segmenter, scorer, temperature = module.segmenter, module.scorer, module.temperature
        if not (isinstance(segmenter, nn.Module) and isinstance(scorer, OODScore) and isinstance(temperature, Tensor)):
            raise TypeError(
                f"DeployableSegmenter: {type(module).__name__}'s segmenter, scorer and temperature must be a module, "
                f"an OOD score and a tensor; got {type(segmenter).__name__}, {type(scorer).__name__} and "
                f"{type(temperature).__name__}"
            )
        # The parts, not the LightningModule: tracing must not reach trainer-bound attributes.
        self.segmenter = segmenter.eval()
        self.scorer = scorer.eval()
        self.register_buffer("temperature", temperature.detach().clone())
        self.input_format = input_format
        self.num_classes = int(getattr(module, "num_classes", 0))
        self.register_buffer("mean", torch.tensor([255.0 * m for m in IMAGENET_MEAN]).view(1, 3, 1, 1))
        self.register_buffer("inv_std", torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Class scores, prediction and OOD score of a batch of images."""
        if self.input_format == "uint8":
            image = (image.float() - self.mean) * self.inv_std
        _, output = identify_output(run_segmenter(self.segmenter, image), who="DeployableSegmenter")
        scaled = class_scores_at(output, (image.shape[-2], image.shape[-1])) / self.temperature
        # Scores defined on raw outputs (SML, RbA, Mask2Anomaly) see them without the temperature.
        score = self.scorer(scaled if self.scorer.uses_temperature else scaled * self.temperature)
        return scaled, scaled.argmax(dim=1), score


__all__ = ["DeployableSegmenter", "InputFormat", "OUTPUT_NAMES"]
