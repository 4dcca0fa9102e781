"""detectron2-format Mask2Former checkpoints (as RbA ships them) imported into transformers' Mask2Former.

The checkpoint is written from a tiny random transformers model through an inverse renaming written
here from the original Mask2Former code's module names (github.com/facebookresearch/Mask2Former:
D2SwinTransformer, MSDeformAttnPixelDecoder, MultiScaleMaskedTransformerDecoder), saved in both of
detectron2's layouts (.pkl of numpy arrays, .pth of tensors), imported back, and must score identically.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthrel_lightning.models import HFMask2Former, OODSegmenter
from synthrel_lightning.testing import tiny_mask2former_config, tiny_swin_config

K = 5
# RbA's one-decoder-layer Mask2Former: DEC_LAYERS 2 (one layer plus the learnable queries' loss).
SWIN = tiny_swin_config(depths=(1, 2, 1, 1), num_heads=(1, 2, 1, 1))
CONFIG = tiny_mask2former_config(decoder_layers=2, encoder_layers=2, swin=SWIN)

# transformers name -> original Mask2Former name (the inverse of the importer, written independently)
INVERSE = [
    (
        r"model\.pixel_level_module\.encoder\.swin\.embeddings\.patch_embeddings\.projection\.",
        "backbone.patch_embed.proj.",
    ),
    (r"model\.pixel_level_module\.encoder\.swin\.embeddings\.norm\.", "backbone.patch_embed.norm."),
    (r"model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.", None),  # norm{stage-1}
    (r"model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.", "backbone.layers."),
    (r"model\.pixel_level_module\.decoder\.level_embed$", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (r"model\.pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
    (
        r"model\.pixel_level_module\.decoder\.encoder\.layers\.",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.",
    ),
    (r"model\.pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (r"model\.pixel_level_module\.decoder\.", "sem_seg_head.pixel_decoder."),
    (r"model\.transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (r"model\.transformer_module\.queries_features\.", "sem_seg_head.predictor.query_feat."),
    (r"model\.transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
    (r"model\.transformer_module\.decoder\.layernorm\.", "sem_seg_head.predictor.decoder_norm."),
    (r"model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.", None),
    (r"model\.transformer_module\.decoder\.layers\.", "sem_seg_head.predictor.LAYER."),
    (r"class_predictor\.", "sem_seg_head.predictor.class_embed."),
    (r"criterion\.empty_weight", "criterion.empty_weight"),
]
SWIN_PARTS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.relative_position_bias.relative_position_bias_table": "attn.relative_position_bias_table",
}
ENCODER_PARTS = {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2", "fc1": "linear1", "fc2": "linear2"}
DECODER_PARTS = {
    "self_attn.out_proj": "transformer_self_attention_layers.{i}.self_attn.out_proj",
    "self_attn_layer_norm": "transformer_self_attention_layers.{i}.norm",
    "cross_attn.in_proj_weight": "transformer_cross_attention_layers.{i}.multihead_attn.in_proj_weight",
    "cross_attn.in_proj_bias": "transformer_cross_attention_layers.{i}.multihead_attn.in_proj_bias",
    "cross_attn.out_proj": "transformer_cross_attention_layers.{i}.multihead_attn.out_proj",
    "cross_attn_layer_norm": "transformer_cross_attention_layers.{i}.norm",
    "fc1": "transformer_ffn_layers.{i}.linear1",
    "fc2": "transformer_ffn_layers.{i}.linear2",
    "final_layer_norm": "transformer_ffn_layers.{i}.norm",
}


def _to_detectron2(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict the original Mask2Former code would hold for the same weights."""
    out: dict[str, torch.Tensor] = {}
    for name, value in hf.items():
        if "swin.layernorm." in name:
            continue  # transformers-only, unused by Mask2Former
        if re.search(r"(q_proj|k_proj|v_proj)\.", name):
            if ".q_proj." not in name:
                continue
            fused = torch.cat([hf[name], hf[name.replace("q_proj", "k_proj")], hf[name.replace("q_proj", "v_proj")]])
            kind = name.rsplit(".", 1)[1]
            if "swin" in name:
                block = re.search(r"layers\.(\d+)\.blocks\.(\d+)", name)
                out[f"backbone.layers.{block[1]}.blocks.{block[2]}.attn.qkv.{kind}"] = fused
            else:
                i = re.search(r"decoder\.layers\.(\d+)\.", name)[1]
                out[f"sem_seg_head.predictor.transformer_self_attention_layers.{i}.self_attn.in_proj_{kind}"] = fused
            continue
        new = None
        for pattern, repl in INVERSE:
            m = re.match(pattern, name)
            if not m:
                continue
            if "hidden_states_norms" in pattern:
                new = f"backbone.norm{int(m[1]) - 1}." + name[m.end() :]
            elif "mask_embedder" in pattern:
                new = f"sem_seg_head.predictor.mask_embed.layers.{m[1]}." + name[m.end() :]
            else:
                new = repl + name[m.end() :]
            break
        assert new is not None, name
        if new.startswith("backbone.layers.") and ".blocks." in new:
            for a, b in SWIN_PARTS.items():
                new = new.replace(f".{a}.", f".{b}.").replace(f".{a}", f".{b}") if f".{a}" in new else new
        if ".transformer.encoder.layers." in new:
            head, tail = new.split(".transformer.encoder.layers.")
            idx, rest = tail.split(".", 1)
            for a, b in ENCODER_PARTS.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
            new = f"{head}.transformer.encoder.layers.{idx}.{rest}"
        if re.match(r"sem_seg_head\.pixel_decoder\.(adapter|layer)_\d+\.", new):
            stem, j, leaf = re.match(r"(sem_seg_head\.pixel_decoder\.(?:adapter|layer)_\d+)\.(\d)\.(.+)", new).groups()
            new = f"{stem}.{leaf}" if j == "0" else f"{stem}.norm.{leaf}"
        if ".LAYER." in new:
            idx, rest = new.split(".LAYER.")[1].split(".", 1)
            for a, b in DECODER_PARTS.items():
                if rest == a or rest.startswith(a + "."):
                    rest = b.format(i=idx) + rest[len(a) :]
                    break
            new = f"sem_seg_head.predictor.{rest}"
        out[new] = value.clone()
    # buffers the original model also saves
    out["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    return out


def _save_pkl(state: dict[str, torch.Tensor], path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)


def _tiny(seed: int, **overrides) -> HFMask2Former:
    torch.manual_seed(seed)
    return HFMask2Former(checkpoint=None, num_classes=K, config={**CONFIG, **overrides}).eval()


@pytest.mark.parametrize("layout", ["pkl", "pth"])
def test_detectron2_checkpoint_round_trip_scores_identically(layout: str, tmp_path: Path) -> None:
    source = _tiny(0)
    state = _to_detectron2(source.model.state_dict())
    assert any(k.startswith("sem_seg_head.predictor.transformer_self_attention_layers.0.") for k in state)
    path = tmp_path / f"model_final.{layout}"
    if layout == "pkl":
        _save_pkl(state, path)
    else:
        torch.save({"model": state, "iteration": 2000}, path)
    imported = HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, detectron2_checkpoint=str(path)).eval()
    fresh = _tiny(1)
    images = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        a, b, c = source(images), imported(images), fresh(images)
    assert torch.equal(a.class_logits, b.class_logits) and torch.equal(a.mask_logits, b.mask_logits)
    assert not torch.equal(a.mask_logits, c.mask_logits)
    mod_a = OODSegmenter(source, num_classes=K, ood_score="rba", summary=False).eval()
    mod_b = OODSegmenter(imported, num_classes=K, ood_score="rba", summary=False).eval()
    with torch.no_grad():
        assert torch.equal(mod_a.score(mod_a(images)), mod_b.score(mod_b(images)))


def test_shape_mismatch_names_the_first_mismatching_key(tmp_path: Path) -> None:
    path = tmp_path / "model_final.pkl"
    _save_pkl(_to_detectron2(_tiny(0).model.state_dict()), path)
    with pytest.raises(ValueError, match=r"model_final\.pkl: shape mismatch at 'class_predictor\.weight'"):
        HFMask2Former(checkpoint=None, num_classes=K + 2, config=CONFIG, detectron2_checkpoint=str(path))
    # RbA's Swin checkpoints feed one feature level to the deformable encoder
    state = _to_detectron2(_tiny(0).model.state_dict())
    state["sem_seg_head.pixel_decoder.transformer.level_embed"] = state[
        "sem_seg_head.pixel_decoder.transformer.level_embed"
    ][:1]
    one_level = tmp_path / "one_level.pth"
    torch.save({"model": state}, one_level)
    with pytest.raises(ValueError, match=r"pixel_level_module\.decoder\.level_embed.*reads 1 feature level"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, detectron2_checkpoint=str(one_level))
    with pytest.raises(ValueError, match="decoder.layers.1"):
        HFMask2Former(
            checkpoint=None, num_classes=K, config={**CONFIG, "decoder_layers": 3}, detectron2_checkpoint=str(path)
        )


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for name in ("evil.pkl", "evil.pth"):
        path = tmp_path / name
        payload = {"model": {"backbone.patch_embed.proj.weight": np.zeros(3)}, "x": _Payload(str(marker))}
        if name.endswith(".pkl"):
            path.write_bytes(pickle.dumps(payload))
        else:
            torch.save(payload, path)
        with pytest.raises(ValueError, match=rf"{name}: refused"):
            HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, detectron2_checkpoint=str(path))
        assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="no_such.pkl"):
        HFMask2Former(
            checkpoint=None, num_classes=K, config=CONFIG, detectron2_checkpoint=str(tmp_path / "no_such.pkl")
        )


def test_import_command_writes_a_transformers_folder(tmp_path: Path) -> None:
    import json

    source = _tiny(0)
    path = tmp_path / "model_final.pkl"
    _save_pkl(_to_detectron2(source.model.state_dict()), path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "num_labels": K}))
    out = tmp_path / "hf"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthrel_lightning",
            "import_mask2former",
            str(path),
            str(out),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = HFMask2Former(checkpoint=str(out), num_classes=K).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images).mask_logits, source(images).mask_logits)
    bad = subprocess.run(
        [*[sys.executable, "-m", "synthrel_lightning", "import_mask2former"], str(tmp_path / "none.pkl"), "x"]
        + ["--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=300,
    )
    assert bad.returncode == 2 and "none.pkl" in bad.stderr.strip().splitlines()[0]
