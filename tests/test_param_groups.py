"""Optimizer parameter groups against a transcription of Mask2Former's ``build_optimizer``.

The loop of ``train_net.py`` (github.com/facebookresearch/Mask2Former; RbA's, github.com/NazirNayal8/RbA,
is the same) is transcribed below on the module's own names: the backbone test ``"backbone" in
module_name`` reads transformers' name of the backbone module, ``pixel_level_module.encoder``.
"""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from test_detectron2_import import CONFIG, K

from synthrel_lightning.models import HFMask2Former, OODSegmenter
from synthrel_lightning.models.param_groups import ParamGroups

BASE_LR, WEIGHT_DECAY = 1e-4, 0.05
MASK2FORMER_GROUPS = {
    "lr_multipliers": {r"pixel_level_module\.encoder\.": 0.1},
    "no_weight_decay": ["relative_position_bias_table", "absolute_pos_embed"],
    "norm_weight_decay": 0.0,
    "embedding_weight_decay": 0.0,
}


def build_optimizer_reference(model: torch.nn.Module) -> dict[int, tuple[float, float]]:
    """Per parameter (by id), the (lr, weight_decay) Mask2Former's build_optimizer gives it."""
    norm_module_types = (
        torch.nn.BatchNorm1d,
        torch.nn.BatchNorm2d,
        torch.nn.BatchNorm3d,
        torch.nn.SyncBatchNorm,
        torch.nn.GroupNorm,
        torch.nn.InstanceNorm1d,
        torch.nn.InstanceNorm2d,
        torch.nn.InstanceNorm3d,
        torch.nn.LayerNorm,
        torch.nn.LocalResponseNorm,
    )
    defaults = {"lr": BASE_LR, "weight_decay": WEIGHT_DECAY}
    out: dict[int, tuple[float, float]] = {}
    memo: set[int] = set()
    for module_name, module in model.named_modules():
        for module_param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or id(value) in memo:
                continue
            memo.add(id(value))
            hyperparams = copy.copy(defaults)
            if "pixel_level_module.encoder" in module_name:  # detectron2: "backbone" in module_name
                hyperparams["lr"] = hyperparams["lr"] * 0.1
            if "relative_position_bias_table" in module_param_name or "absolute_pos_embed" in module_param_name:
                hyperparams["weight_decay"] = 0.0
            if isinstance(module, norm_module_types):
                hyperparams["weight_decay"] = 0.0
            if isinstance(module, torch.nn.Embedding):
                hyperparams["weight_decay"] = 0.0
            out[id(value)] = (hyperparams["lr"], hyperparams["weight_decay"])
    return out


def _segmenter() -> HFMask2Former:
    torch.manual_seed(0)
    return HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, encoder_feature_levels=1)


def _per_param(optimizer: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("trainable", [None, ["class_predictor", "mask_embedder", "encoder.hidden_states_norms"]])
def test_groups_equal_mask2former_build_optimizer(trainable: list[str] | None) -> None:
    module = OODSegmenter(
        _segmenter(),
        num_classes=K,
        ood_score="rba",
        summary=False,
        trainable=trainable,
        optimizer=lambda p: torch.optim.AdamW(p, lr=BASE_LR, weight_decay=WEIGHT_DECAY),
        scheduler=lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=10, power=0.9),
        scheduler_interval="step",
        param_groups=ParamGroups(**MASK2FORMER_GROUPS),
    )
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    got, want = _per_param(optimizer), build_optimizer_reference(module)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == pytest.approx(want[key][0], rel=1e-12) and got[key][1] == want[key][1]
    kinds = set(want.values())
    if trainable is None:  # every kind occurs: backbone norms, backbone weights, head norms/embeddings, head weights
        assert kinds == {(1e-5, 0.0), (1e-5, 0.05), (1e-4, 0.0), (1e-4, 0.05)}
    else:
        assert kinds == {(1e-5, 0.0), (1e-4, 0.05)}
    # the scheduler starts from the multiplied rates
    assert sorted(set(scheduler.base_lrs)) == pytest.approx(sorted({lr for lr, _ in kinds}))


def test_without_param_groups_one_group_and_trains() -> None:
    module = OODSegmenter(_segmenter(), num_classes=K, ood_score="rba", summary=False)
    optimizer = module.configure_optimizers()
    assert len(optimizer.param_groups) == 1
    grouped = OODSegmenter(
        _segmenter(),
        num_classes=K,
        ood_score="rba",
        summary=False,
        trainable=["class_predictor", "mask_embedder"],
        param_groups=ParamGroups(**MASK2FORMER_GROUPS),
    )
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    batches = [{"image": images[i], "label": target[i]} for i in range(2)]
    loader = torch.utils.data.DataLoader(batches, batch_size=2)
    before = {n: p.detach().clone() for n, p in grouped.named_parameters()}
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(grouped, train_dataloaders=loader)
    changed = {n for n, p in grouped.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("class_predictor" in n or "mask_embedder" in n for n in changed)


def test_a_pattern_that_matches_nothing_is_an_error() -> None:
    groups = ParamGroups(lr_multipliers={r"backbone\.": 0.1})
    with pytest.raises(ValueError, match=r"lr_multipliers patterns \['backbone\\\\.'\] match no parameter"):
        groups(_segmenter())
    with pytest.raises(ValueError, match="must be >= 0"):
        ParamGroups(lr_multipliers={"x": -1.0})
