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
    assert seg["encoder_feature_levels"] == 1  # RbA's swin_b_1dl reads res5 only
    ckpt = tmp_path / "model_final.pkl"
    _save_pkl(_to_detectron2(_tiny(0, encoder_feature_levels=1).model.state_dict()), ckpt)
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
    reference = _tiny(0, encoder_feature_levels=1).model
    torch.testing.assert_close(module.segmenter.model.class_predictor.weight, reference.class_predictor.weight)
    level_embed = module.segmenter.model.model.pixel_level_module.decoder.level_embed
    torch.testing.assert_close(level_embed, reference.model.pixel_level_module.decoder.level_embed)
    opt = module.configure_optimizers()
    optimizer, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    assert type(optimizer).__name__ == "AdamW" and optimizer.defaults["weight_decay"] == 0.05
    for _ in range(1000):
        optimizer.step()
        sched.step()
    # detectron2's WarmupPolyLR without warm-up: base_lr * (1 - iter / max_iter) ** power
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 1000 / 2000) ** 0.9, rel=1e-9)


def test_rbas_cityscapes_only_baseline_values() -> None:
    """recipes/rba_cityscapes.yaml: RbA's swin_b_1dl training (maskformer2_swin_base_IN21k_384_bs16_90k_1dl.yaml)."""
    from transformers import Mask2FormerConfig

    cfg = _load("rba_cityscapes")
    model, trainer, data = cfg["model"]["init_args"], cfg["trainer"], cfg["data"]["init_args"]
    seg = model["segmenter"]["init_args"]
    assert (trainer["max_steps"], trainer["val_check_interval"], trainer["gradient_clip_val"]) == (90000, 5000, 0.01)
    assert model["optimizer"]["init_args"] == {"lr": 1e-4, "weight_decay": 0.05}
    assert model["scheduler"]["init_args"] == {"total_iters": 90000, "power": 0.9}
    assert "losses" not in model and "trainable" not in model and "outliers" not in data
    assert model["param_groups"]["init_args"]["lr_multipliers"] == {r"pixel_level_module\.encoder\.": 0.1}
    assert (seg["encoder_feature_levels"], seg["backbone_checkpoint"]) == (
        1,
        "microsoft/swin-base-patch4-window12-384-in22k",
    )
    m2f = Mask2FormerConfig(num_labels=seg["num_classes"], **seg["config"])
    assert (m2f.decoder_layers, m2f.backbone_config.embed_dim, m2f.backbone_config.window_size) == (2, 128, 12)
    # apart from the starting weights, the levels and the optimizer, the model is the fine-tuning recipes' model
    coco = _load("rba_cityscapes_coco")["model"]["init_args"]["segmenter"]["init_args"]
    assert coco["config"] == seg["config"] and coco["num_classes"] == seg["num_classes"]


def test_baseline_recipe_instantiates_with_tiny_weights_and_groups_as_mask2former(tmp_path) -> None:
    from jsonargparse import ArgumentParser
    from test_detectron2_import import CONFIG, SWIN
    from test_param_groups import BASE_LR, build_optimizer_reference
    from transformers import SwinConfig, SwinForImageClassification

    from synthrel_lightning.models import OODSegmenter

    cfg = _load("rba_cityscapes")
    seg = cfg["model"]["init_args"]["segmenter"]["init_args"]
    swin = SwinForImageClassification(
        SwinConfig(**{k: v for k, v in SWIN.items() if k not in ("model_type", "out_features")})
    )
    swin.save_pretrained(tmp_path / "swin")
    tiny = copy.deepcopy(seg["config"])
    tiny.update(copy.deepcopy(CONFIG))
    seg.update(config=tiny, num_classes=5, backbone_checkpoint=str(tmp_path / "swin"))
    cfg["model"]["init_args"]["num_classes"] = 5
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(OODSegmenter, "model")
    parsed = parser.parse_object({"model": cfg["model"]})
    module = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(parsed).model
    assert all(p.requires_grad for p in module.parameters())
    assert module.segmenter.model.model.pixel_level_module.decoder.level_embed.shape[0] == 1
    encoder = module.segmenter.model.model.pixel_level_module.encoder.swin
    torch.testing.assert_close(encoder.embeddings.norm.weight, swin.swin.embeddings.norm.weight)
    optimizer = module.configure_optimizers()["optimizer"]
    got = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    want = build_optimizer_reference(module)
    assert got.keys() == want.keys()
    assert all(got[k][0] == pytest.approx(want[k][0]) and got[k][1] == want[k][1] for k in want)
    assert sorted({lr for lr, _ in want.values()}) == pytest.approx([BASE_LR * 0.1, BASE_LR])
