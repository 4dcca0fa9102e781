"""detectron2 Mask2Former configurations (RbA's shipped config.yaml) as Mask2FormerConfig values."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from synthrel_lightning.models.detectron2_config import is_detectron2_config, mask2former_config_from_detectron2

REPO = Path(__file__).resolve().parents[1]
# The keys the translation reads, with their values in RbA's ckpts/swin_b_1dl/config.yaml
# (github.com/NazirNayal8/RbA); the file holds some 500 more lines of unrelated detectron2 defaults.
RBA_SWIN_B_1DL = yaml.safe_load(
    """
MODEL:
  BACKBONE: {NAME: D2SwinTransformer}
  SWIN:
    PRETRAIN_IMG_SIZE: 384
    PATCH_SIZE: 4
    EMBED_DIM: 128
    DEPTHS: [2, 2, 18, 2]
    NUM_HEADS: [4, 8, 16, 32]
    WINDOW_SIZE: 12
    MLP_RATIO: 4.0
    QKV_BIAS: true
    DROP_PATH_RATE: 0.3
    DROP_RATE: 0.0
    ATTN_DROP_RATE: 0.0
    APE: false
    OUT_FEATURES: [res2, res3, res4, res5]
  SEM_SEG_HEAD:
    PIXEL_DECODER_NAME: MSDeformAttnPixelDecoder
    IN_FEATURES: [res2, res3, res4, res5]
    DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES: [res5]
    DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS: 4
    NUM_CLASSES: 19
    CONVS_DIM: 256
    MASK_DIM: 256
    TRANSFORMER_ENC_LAYERS: 6
    COMMON_STRIDE: 4
  MASK_FORMER: {HIDDEN_DIM: 256, DEC_LAYERS: 2, NUM_OBJECT_QUERIES: 100, NHEADS: 8,
    DIM_FEEDFORWARD: 2048, DROPOUT: 0.0, PRE_NORM: false, ENFORCE_INPUT_PROJ: false,
    DEEP_SUPERVISION: true, NO_OBJECT_WEIGHT: 0.1, CLASS_WEIGHT: 2.0, MASK_WEIGHT: 5.0,
    DICE_WEIGHT: 5.0, TRAIN_NUM_POINTS: 12544, OVERSAMPLE_RATIO: 3.0, IMPORTANCE_SAMPLE_RATIO: 0.75}
SOLVER: {BASE_LR: 0.0001}
"""
)


@pytest.mark.parametrize("recipe", ["rba_cityscapes", "rba_cityscapes_coco", "rba_cityscapes_synthetic"])
def test_rbas_config_translates_to_the_recipes_model(recipe: str) -> None:
    """The recipes' hand-cited model values equal the translation of RbA's shipped configuration."""
    seg = yaml.safe_load((REPO / "recipes" / f"{recipe}.yaml").read_text())["model"]["init_args"]["segmenter"]
    seg = seg["init_args"]
    got = mask2former_config_from_detectron2(RBA_SWIN_B_1DL, "swin_b_1dl/config.yaml")
    assert (got.pop("encoder_feature_levels"), got.pop("decoder_feature_levels")) == (1, 1)
    assert got.pop("num_labels") == seg["num_classes"] == 19
    assert got == seg["config"] and seg["encoder_feature_levels"] == 1
    three = copy.deepcopy(RBA_SWIN_B_1DL)
    three["MODEL"]["SEM_SEG_HEAD"]["DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"] = ["res3", "res4", "res5"]
    levels = mask2former_config_from_detectron2(three, "x", decoder_feature_levels=3)
    assert (levels["encoder_feature_levels"], levels["decoder_feature_levels"]) == (3, 3)
    assert is_detectron2_config(RBA_SWIN_B_1DL) and not is_detectron2_config(seg["config"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BACKBONE.NAME", "build_resnet_backbone", "takes Swin backbones only"),
        ("SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", ["res3"], "must be the coarsest levels"),
        ("SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", 8, "N_POINTS must be 4"),
        ("MASK_FORMER.NHEADS", None, r"missing MODEL\.MASK_FORMER\.NHEADS"),
    ],
)
def test_configs_that_do_not_map_are_refused_naming_the_key(key: str, value, message: str) -> None:
    cfg = copy.deepcopy(RBA_SWIN_B_1DL)
    section, leaf = key.split(".")
    if value is None:
        del cfg["MODEL"][section][leaf]
    else:
        cfg["MODEL"][section][leaf] = value
    with pytest.raises(ValueError, match=rf"my/config\.yaml: .*{message}"):
        mask2former_config_from_detectron2(cfg, "my/config.yaml")


def test_import_command_reads_the_detectron2_config(tmp_path: Path) -> None:
    """import_mask2former CHECKPOINT OUT --config config.yaml with RbA's structure at a tiny size."""
    from test_detectron2_import import CONFIG, SWIN, _to_detectron2

    from synthrel_lightning.models import HFMask2Former

    cfg = copy.deepcopy(RBA_SWIN_B_1DL)
    model_cfg = cfg["MODEL"]
    model_cfg["SWIN"].update(EMBED_DIM=SWIN["embed_dim"], DEPTHS=SWIN["depths"], NUM_HEADS=SWIN["num_heads"])
    model_cfg["SWIN"].update(WINDOW_SIZE=SWIN["window_size"])
    model_cfg["SEM_SEG_HEAD"].update(NUM_CLASSES=5, CONVS_DIM=32, MASK_DIM=32, TRANSFORMER_ENC_LAYERS=2)
    model_cfg["MASK_FORMER"].update(HIDDEN_DIM=32, NUM_OBJECT_QUERIES=8, NHEADS=2, DIM_FEEDFORWARD=32)
    model_cfg["MASK_FORMER"].update(TRAIN_NUM_POINTS=CONFIG["train_num_points"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    # the original pixel decoder's feed-forward width is fixed at 1024
    big = HFMask2Former(
        checkpoint=None, num_classes=5, config={**CONFIG, "encoder_feedforward_dim": 1024}, encoder_feature_levels=1
    ).eval()
    torch.save({"model": _to_detectron2(big.model.state_dict())}, tmp_path / "model_final.pth")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "synthrel_lightning", "import_mask2former", str(tmp_path / "model_final.pth")]
        + [str(tmp_path / "hf"), "--config", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = HFMask2Former(checkpoint=str(tmp_path / "hf"), num_classes=5).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images).mask_logits, big(images).mask_logits)
    model_cfg["BACKBONE"]["NAME"] = "build_resnet_backbone"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    bad = subprocess.run(
        [sys.executable, "-m", "synthrel_lightning", "import_mask2former", str(tmp_path / "model_final.pth")]
        + [str(tmp_path / "hf2"), "--config", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and "bad.yaml: MODEL.BACKBONE.NAME" in bad.stderr.strip().splitlines()[0]
