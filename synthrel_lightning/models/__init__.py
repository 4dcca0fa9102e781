"""The OOD segmenter LightningModule and segmenter factories."""

from synthrel_lightning.models.ood_segmenter import OODSegmenter
from synthrel_lightning.models.segmenters import HFSegformer, SMPSegmenter, TinySegmenter

__all__ = ["OODSegmenter", "SMPSegmenter", "HFSegformer", "TinySegmenter"]
