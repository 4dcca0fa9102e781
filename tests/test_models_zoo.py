"""recipes/zoo_cityscapes_public.yaml: every entry instantiates through jsonargparse (tiny configs substituted)."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
import yaml
from test_models_mask_classification import MASK2FORMER, ONEFORMER

ZOO = Path(__file__).resolve().parents[1] / "recipes" / "zoo_cityscapes_public.yaml"
SEGFORMER = {
    "hidden_sizes": [8, 16, 32, 64],
    "depths": [1, 1, 1, 1],
    "decoder_hidden_size": 32,
    "num_attention_heads": [1, 1, 2, 2],
}
TINY = {
    "synthrel_lightning.models.HFSegformer": {"config": SEGFORMER},
    "synthrel_lightning.models.HFMask2Former": {"config": MASK2FORMER},
    "synthrel_lightning.models.HFOneFormer": {"config": ONEFORMER, "task_token_ids": [3, 1, 4]},
}


def _tiny(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    seg = spec["init_args"]["segmenter"]
    seg["init_args"] = {**seg["init_args"], "checkpoint": None, **TINY[seg["class_path"]]}
    return spec


def _parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=L.LightningModule)
    return parser


def test_public_zoo_names_every_public_cityscapes_checkpoint_with_its_scores() -> None:
    zoo = yaml.safe_load(ZOO.read_text())["zoo"]
    checkpoints = {e["model"]["init_args"]["segmenter"]["init_args"]["checkpoint"] for e in zoo}
    assert {f"nvidia/segformer-b{b}-finetuned-cityscapes-1024-1024" for b in range(6)} <= checkpoints
    assert {
        "facebook/mask2former-swin-tiny-cityscapes-semantic",
        "facebook/mask2former-swin-small-cityscapes-semantic",
        "facebook/mask2former-swin-base-IN21k-cityscapes-semantic",
        "facebook/mask2former-swin-large-cityscapes-semantic",
        "shi-labs/oneformer_cityscapes_swin_large",
    } <= checkpoints
    assert len({e["name"] for e in zoo}) == len(zoo)
    scores = {e["name"]: e["model"]["init_args"]["ood_score"] for e in zoo}
    assert scores["mask2former_swin_large_rba"] == "rba" and scores["segformer_b5_energy"] == "energy"
    assert not any(s in ("rba", "mask2anomaly") for n, s in scores.items() if n.startswith("segformer"))


def test_public_zoo_entries_instantiate_and_score_with_tiny_configs() -> None:
    zoo = yaml.safe_load(ZOO.read_text())["zoo"]
    parser = _parser()
    by_segmenter: dict[str, list[dict]] = {}
    for entry in zoo:
        spec = _tiny(entry["model"])
        parser.parse_object({"model": spec})  # every entry: class paths, arguments and score names check
        by_segmenter.setdefault(entry["name"].rsplit("_", 1)[0].removesuffix("_max"), []).append(spec)
    images = torch.randn(1, 3, 64, 64)
    for specs in by_segmenter.values():
        model = parser.instantiate(parser.parse_object({"model": specs[0]})).model.eval()
        with torch.no_grad():
            logits = model(images)
            assert logits.shape == (1, 19, 64, 64)
            for spec in specs:
                model.set_ood_score(spec["init_args"]["ood_score"])
                assert torch.isfinite(model.score(logits)).all()
    assert len(by_segmenter) == 11
