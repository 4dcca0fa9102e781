"""RbA's published configurations as recipes: parsed, instantiated with a tiny model substituted, and compared."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["rba_cityscapes_coco", "rba_cityscapes_synthetic"]


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())


def test_the_synthetic_variant_differs_from_rbas_coco_run_only_in_the_outlier_source() -> None:
    coco, synthetic = _load("rba_cityscapes_coco"), _load("rba_cityscapes_synthetic")
    sources = []
    for cfg in (coco, synthetic):
        sources.append(cfg["data"]["init_args"]["outliers"]["init_args"].pop("source")["class_path"])
        cfg["trainer"].pop("default_root_dir")
    assert sources == ["synthrel_lightning.synthesis.CocoObjectSource", "synthrel_lightning.synthesis.BankSource"]
    assert coco == synthetic


def test_rbas_values_and_model_config() -> None:
    from transformers import Mask2FormerConfig

    cfg = _load("rba_cityscapes_coco")
    model, trainer = cfg["model"]["init_args"], cfg["trainer"]
    seg = model["segmenter"]["init_args"]
    assert (trainer["max_steps"], model["optimizer"]["init_args"]["lr"]) == (2000, 1e-4)
    assert cfg["data"]["init_args"]["outliers"]["init_args"]["probability"] == 0.1
    assert cfg["data"]["init_args"]["outliers"]["init_args"]["num_objects"] == [1, 1]
    assert model["scheduler"]["class_path"].endswith("PolynomialLR") and model["scheduler_interval"] == "step"
    m2f = Mask2FormerConfig(num_labels=seg["num_classes"], **seg["config"])
    assert (m2f.decoder_layers, m2f.num_queries, m2f.backbone_config.embed_dim) == (2, 100, 128)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_model_instantiates_with_a_tiny_config_and_trains_only_rbas_parameters(name: str, tmp_path) -> None:
    from jsonargparse import ArgumentParser
    from test_detectron2_import import CONFIG, _save_pkl, _tiny, _to_detectron2

    from synthrel_lightning.models import OODSegmenter

    cfg = _load(name)
    seg = cfg["model"]["init_args"]["segmenter"]["init_args"]
    ckpt = tmp_path / "model_final.pkl"
    _save_pkl(_to_detectron2(_tiny(0).model.state_dict()), ckpt)
    tiny = copy.deepcopy(seg["config"])
    tiny.update(copy.deepcopy(CONFIG))
    seg.update(config=tiny, num_classes=5, detectron2_checkpoint=str(ckpt))
    cfg["model"]["init_args"]["num_classes"] = 5
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(OODSegmenter, "model")
    parsed = parser.parse_object({"model": cfg["model"]})
    module = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(parsed).model
    assert isinstance(module, OODSegmenter) and module.ood_score == "rba"
    trainable = sorted(n for n, p in module.segmenter.named_parameters() if p.requires_grad)
    assert trainable and all("class_predictor" in n or "mask_embedder" in n for n in trainable)
    assert any("class_predictor" in n for n in trainable) and any("mask_embedder" in n for n in trainable)
    # the imported weights, not the random ones
    torch.testing.assert_close(module.segmenter.model.class_predictor.weight, _tiny(0).model.class_predictor.weight)
    opt = module.configure_optimizers()
    optimizer, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["weight_decay"] == 0.05
    for _ in range(1000):
        optimizer.step()
        sched.step()
    # detectron2's WarmupPolyLR without warm-up: base_lr * (1 - iter / max_iter) ** power
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 1000 / 2000) ** 0.9, rel=1e-9)
