"""One entry point for the ``export_model`` command: a checkpoint or a pretrained model, written for deployment.

A Lightning checkpoint (``.ckpt``, with the run's ``config.yaml`` when the checkpoint alone does
not rebuild the module) or a ``save_pretrained`` folder / hub id becomes an ONNX graph, a
TorchScript module or a ``save_pretrained`` folder (config, safetensors weights, model card).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from synthrel_lightning.deploy.export import InputFormat, export_segmenter

TargetFormat = Literal["onnx", "torchscript", "pretrained"]


def load_source(source: str, config: str | None = None, trust_checkpoint: bool = False) -> Any:
    """The module held by a Lightning checkpoint file, or by a ``save_pretrained`` folder or hub id."""
    from synthrel_lightning.correlation.zoo import ZooEntry, instantiate_model
    from synthrel_lightning.hub import from_pretrained

    path = Path(source).expanduser()
    if path.is_file():
        entry = ZooEntry(name=path.stem, checkpoint=str(path), config=config, trust_checkpoint=trust_checkpoint)
        return instantiate_model(entry).eval()
    return from_pretrained(source)


def export_model(
    source: str,
    output: str,
    format: TargetFormat = "onnx",
    run_config: str | None = None,
    input_size: tuple[int, int] = (1024, 2048),
    input_format: InputFormat = "normalized",
    dynamic_size: bool = False,
    atol: float = 1e-3,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Export a trained OOD segmenter with its temperature and OOD score folded in.

    Args:
        source: a Lightning checkpoint (``.ckpt``) or a ``save_pretrained`` folder / hub id.
        output: the file (``onnx``, ``torchscript``) or folder (``pretrained``) to write.
        format: ``onnx`` (checked with onnxruntime), ``torchscript``, or ``pretrained``
            (config, safetensors weights and model card, for ``from_pretrained`` / the hub).
        run_config: the run's LightningCLI config, when the checkpoint does not hold the whole model
            definition (its ``model`` section is used).
        input_size: (height, width) of the deployed frames (ONNX/TorchScript).
        input_format: ``normalized`` (float, ImageNet statistics) or ``uint8`` (0..255 RGB) images.
        dynamic_size: let height and width vary (checked on a second size; refused if the graph does not
            generalise).
        atol: largest accepted absolute difference to PyTorch.
        trust_checkpoint: load a checkpoint that pickles arbitrary objects (only from a trusted origin).
    """
    module = load_source(source, config=run_config, trust_checkpoint=trust_checkpoint)
    if format == "pretrained":
        spec = None
        if run_config is not None:
            import yaml

            spec = (yaml.safe_load(Path(run_config).read_text()) or {}).get("model")
        folder = module.save_pretrained(output, model_spec=spec, recipe=run_config)
        return {"format": "pretrained", "path": os.fspath(folder)}
    report = export_segmenter(
        module,
        output,
        format=format,
        input_size=input_size,
        input_format=input_format,
        dynamic_size=dynamic_size,
        atol=atol,
    )
    return report.as_dict()


__all__ = ["TargetFormat", "export_model", "load_source"]
