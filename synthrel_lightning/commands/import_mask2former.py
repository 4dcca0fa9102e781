"""``python -m synthrel_lightning import_mask2former``: a detectron2 Mask2Former checkpoint as a transformers folder.

``import_mask2former CHECKPOINT --config CONFIG OUT`` reads ``CHECKPOINT`` (``.pkl``/``.pth`` with a
``"model"`` state dict in the original Mask2Former names, e.g. RbA's ``model_final.pth``) without running
pickled code, loads it into a Mask2Former built from ``CONFIG`` (a JSON or YAML file of
``Mask2FormerConfig`` values, e.g. ``decoder_layers: 2`` and ``encoder_feature_levels: 1`` for RbA's
one-decoder-layer Swin models) or the detectron2 ``config.yaml`` shipped with the checkpoint (RbA's
``ckpts/<model>/config.yaml``), and writes the folder ``OUT`` (``save_pretrained``), which
``HFMask2Former(checkpoint=OUT)`` loads. Bad input ends with one line naming the file and the cause, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def import_mask2former(checkpoint: str, config: dict[str, Any], out: str) -> dict[str, Any]:
    """Build the model from ``config``, load ``checkpoint`` into it and save it under ``out`` (atomically)."""
    from transformers import Mask2FormerConfig

    from synthrel_lightning.models.detectron2_import import load_detectron2_mask2former
    from synthrel_lightning.models.mask2former_levels import Mask2FormerLevelsForUniversalSegmentation

    target = Path(out)
    if target.exists():
        raise ValueError(f"{target}: already exists; give a new folder")
    model = Mask2FormerLevelsForUniversalSegmentation(Mask2FormerConfig(**{"use_pretrained_backbone": False, **config}))
    load_detectron2_mask2former(model, checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"checkpoint": str(checkpoint), "out": str(target), "parameters": sum(p.numel() for p in model.parameters())}


def _read_config(path: str) -> dict[str, Any]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of Mask2FormerConfig values, got {type(data).__name__}")
    from synthrel_lightning.models.detectron2_config import is_detectron2_config, mask2former_config_from_detectron2

    if is_detectron2_config(data):
        return mask2former_config_from_detectron2(data, source=path)
    return data


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``import_mask2former``."""
    parser = argparse.ArgumentParser(prog="python -m synthrel_lightning import_mask2former", description=__doc__)
    parser.add_argument("checkpoint", help="detectron2 checkpoint (.pkl or .pth with a 'model' state dict)")
    parser.add_argument("out", help="new folder for the transformers model")
    parser.add_argument(
        "--config",
        required=True,
        help="JSON/YAML file of Mask2FormerConfig values, or the checkpoint's detectron2 config.yaml",
    )
    return parser


def main(args: list[str] | None = None) -> None:
    """Command line of ``python -m synthrel_lightning import_mask2former``; prints a JSON summary."""
    ns = build_parser().parse_args(args)
    try:
        summary = import_mask2former(ns.checkpoint, _read_config(ns.config), ns.out)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"error: import_mask2former: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(summary, indent=2))
