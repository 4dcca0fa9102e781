"""The OOD segmenter LightningModule, segmenter factories and the evaluation result."""

from synthrel_lightning.evaluation_result import EvaluationResult
from synthrel_lightning.models.mask_classification import HFMask2Former, HFOneFormer
from synthrel_lightning.models.ood_segmenter import OODSegmenter
from synthrel_lightning.models.outputs import MaskClassificationOutput, per_pixel_class_scores
from synthrel_lightning.models.param_groups import ParamGroups
from synthrel_lightning.models.segmenters import HFSegformer, SMPSegmenter, TinySegmenter

__all__ = [
    "EvaluationResult",
    "HFMask2Former",
    "HFOneFormer",
    "HFSegformer",
    "MaskClassificationOutput",
    "OODSegmenter",
    "ParamGroups",
    "SMPSegmenter",
    "TinySegmenter",
    "per_pixel_class_scores",
]
