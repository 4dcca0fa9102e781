"""Deployment: a trained OOD segmenter as one graph (class scores, prediction, OOD score), in ONNX or TorchScript."""

from synthrel_lightning.deploy.export import FORMATS, ExportError, ExportReport, export_segmenter
from synthrel_lightning.deploy.module import OUTPUT_NAMES, DeployableSegmenter

__all__ = ["FORMATS", "OUTPUT_NAMES", "DeployableSegmenter", "ExportError", "ExportReport", "export_segmenter"]
