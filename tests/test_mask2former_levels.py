"""Mask2Former with one deformable-encoder level (RbA's Swin models) against the original code.

The pixel decoder (``MSDeformAttnPixelDecoder``, mask2former/modeling/pixel_decoder/msdeformattn.py of
github.com/facebookresearch/Mask2Former, as RbA, github.com/NazirNayal8/RbA, ships it) and RbA's
``MultiScaleMaskedTransformerDecoder`` are transcribed below as plain functions on the weights in
detectron2's names, and run on fixed random inputs with random (not freshly initialized) weights.
RbA's code hands the transformer decoder ``len(DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)`` scales,
the original code always three (``maskformer_num_feature_levels = 3``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_detectron2_import import CONFIG, K, _to_detectron2
from torch import Tensor

from synthrel_lightning.models import HFMask2Former, OODSegmenter
from synthrel_lightning.models.detectron2_import import detectron2_feature_levels

PD = "sem_seg_head.pixel_decoder."
PR = "sem_seg_head.predictor."


# ---- transcription of the original code (weights in detectron2's names) ----
def _pe(x: Tensor, num_pos_feats: int) -> Tensor:
    """PositionEmbeddingSine(num_pos_feats, normalize=True)(x), no mask."""
    not_mask = torch.ones(x.shape[0], x.shape[2], x.shape[3], device=x.device)
    y_embed = not_mask.cumsum(1)
    x_embed = not_mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _ms_deform_attn_core(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """ms_deform_attn_core_pytorch."""
    n, _, m, d = value.shape
    _, lq, m, nl, p, _ = locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lid, (h, w) in enumerate(shapes):
        v = value_list[lid].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(n * m, 1, lq, nl * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


def _linear(w: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.linear(x, w[name + ".weight"], w[name + ".bias"])


def _msdeform_attn(w, name, query, ref, flat, shapes, heads, levels, points=4):
    """MSDeformAttn.forward (reference points of size 2, no padding mask)."""
    n, lq, c = query.shape
    value = _linear(w, name + ".value_proj", flat).view(n, flat.shape[1], heads, c // heads)
    offsets = _linear(w, name + ".sampling_offsets", query).view(n, lq, heads, levels, points, 2)
    attn = _linear(w, name + ".attention_weights", query).view(n, lq, heads, levels * points)
    attn = F.softmax(attn, -1).view(n, lq, heads, levels, points)
    shapes_t = torch.tensor(shapes)
    normalizer = torch.stack([shapes_t[..., 1], shapes_t[..., 0]], -1)
    locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    return _linear(w, name + ".output_proj", _ms_deform_attn_core(value, shapes, locations, attn))


def _reference_points(shapes: list[tuple[int, int]], batch: int) -> Tensor:
    """MSDeformAttnTransformerEncoder.get_reference_points with valid ratios 1."""
    refs = []
    for h, w in shapes:
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
        refs.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
    ref = torch.cat(refs, 1)[:, :, None].repeat(1, 1, len(shapes), 1)
    return ref.expand(batch, -1, -1, -1)


def _group_norm(w: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.group_norm(x, 32, w[name + ".weight"], w[name + ".bias"])


def original_pixel_decoder(
    w, features, encoder_levels, maskformer_levels, conv_dim, heads, enc_layers, common_stride=4
):
    """MSDeformAttnPixelDecoder.forward_features: (mask_features, multi_scale_features).

    ``features``: res2..res5 (strides 4..32); the encoder reads the ``encoder_levels`` coarsest.
    """
    strides = [4, 8, 16, 32]
    in_features = list(range(4))
    transformer_in = in_features[-encoder_levels:]
    srcs, pos = [], []
    for idx, f in enumerate(transformer_in[::-1]):
        x = features[f]
        proj = F.conv2d(x, w[f"{PD}input_proj.{idx}.0.weight"], w[f"{PD}input_proj.{idx}.0.bias"])
        srcs.append(_group_norm(w, f"{PD}input_proj.{idx}.1", proj))
        pos.append(_pe(x, conv_dim // 2))
    # MSDeformAttnTransformerEncoderOnly.forward
    shapes = [(s.shape[2], s.shape[3]) for s in srcs]
    src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    level_embed = w[f"{PD}transformer.level_embed"]
    pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + level_embed[i].view(1, 1, -1) for i, p in enumerate(pos)], 1)
    ref = _reference_points(shapes, src_flat.shape[0])
    out = src_flat
    for i in range(enc_layers):
        name = f"{PD}transformer.encoder.layers.{i}"
        src2 = _msdeform_attn(w, name + ".self_attn", out + pos_flat, ref, out, shapes, heads, encoder_levels)
        out = F.layer_norm(out + src2, (conv_dim,), w[name + ".norm1.weight"], w[name + ".norm1.bias"])
        src2 = _linear(w, name + ".linear2", F.relu(_linear(w, name + ".linear1", out)))
        out = F.layer_norm(out + src2, (conv_dim,), w[name + ".norm2.weight"], w[name + ".norm2.bias"])
    maps = [
        z.transpose(1, 2).reshape(out.shape[0], -1, h, wd)
        for z, (h, wd) in zip(out.split([h * wd for h, wd in shapes], 1), shapes)
    ]
    num_fpn = int(math.log2(min(strides[f] for f in transformer_in)) - math.log2(common_stride))
    for f in in_features[:num_fpn][::-1]:
        j = f + 1  # adapter_{idx+1} over feature_channels[:num_fpn], finest first
        cur = _group_norm(w, f"{PD}adapter_{j}.norm", F.conv2d(features[f], w[f"{PD}adapter_{j}.weight"]))
        y = cur + F.interpolate(maps[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
        y = F.conv2d(y, w[f"{PD}layer_{j}.weight"], padding=1)
        maps.append(F.relu(_group_norm(w, f"{PD}layer_{j}.norm", y)))
    mask_features = F.conv2d(maps[-1], w[f"{PD}mask_features.weight"], w[f"{PD}mask_features.bias"])
    return mask_features, maps[:maskformer_levels]


def _mha(w, name, query, key, value, heads, attn_mask=None):
    """nn.MultiheadAttention(d, heads)(query, key, value, attn_mask) with (L, N, C) inputs."""
    out, _ = F.multi_head_attention_forward(
        query,
        key,
        value,
        query.shape[-1],
        heads,
        w[name + ".in_proj_weight"],
        w[name + ".in_proj_bias"],
        None,
        None,
        False,
        0.0,
        w[name + ".out_proj.weight"],
        w[name + ".out_proj.bias"],
        training=False,
        attn_mask=attn_mask,
        need_weights=False,
    )
    return out


def original_transformer_decoder(w, x, mask_features, levels, hidden, heads, layers):
    """RbA's MultiScaleMaskedTransformerDecoder.forward (post-norm, mask classification): class and mask logits."""

    def ln(name, t):
        return F.layer_norm(t, (hidden,), w[name + ".weight"], w[name + ".bias"])

    def heads_(output, size):
        dec = ln(PR + "decoder_norm", output).transpose(0, 1)
        cls = _linear(w, PR + "class_embed", dec)
        emb = F.relu(_linear(w, PR + "mask_embed.layers.0", dec))
        emb = _linear(w, PR + "mask_embed.layers.2", F.relu(_linear(w, PR + "mask_embed.layers.1", emb)))
        masks = torch.einsum("bqc,bchw->bqhw", emb, mask_features)
        attn = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        attn = (attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1) < 0.5).bool()
        return cls, masks, attn

    src, pos, sizes = [], [], []
    for i in range(levels):
        sizes.append(x[i].shape[-2:])
        pos.append(_pe(x[i], hidden // 2).flatten(2).permute(2, 0, 1))
        src.append((x[i].flatten(2) + w[PR + "level_embed.weight"][i][None, :, None]).permute(2, 0, 1))
    bs = src[0].shape[1]
    query_embed = w[PR + "query_embed.weight"].unsqueeze(1).repeat(1, bs, 1)
    output = w[PR + "query_feat.weight"].unsqueeze(1).repeat(1, bs, 1)
    cls, masks, attn = heads_(output, sizes[0])
    for i in range(layers):
        lvl = i % levels
        attn[torch.where(attn.sum(-1) == attn.shape[-1])] = False
        name = f"{PR}transformer_cross_attention_layers.{i}"
        t2 = _mha(w, name + ".multihead_attn", output + query_embed, src[lvl] + pos[lvl], src[lvl], heads, attn)
        output = ln(name + ".norm", output + t2)
        name = f"{PR}transformer_self_attention_layers.{i}"
        q = output + query_embed
        output = ln(name + ".norm", output + _mha(w, name + ".self_attn", q, q, output, heads))
        name = f"{PR}transformer_ffn_layers.{i}"
        t2 = _linear(w, name + ".linear2", F.relu(_linear(w, name + ".linear1", output)))
        output = ln(name + ".norm", output + t2)
        cls, masks, attn = heads_(output, sizes[(i + 1) % levels])
    return cls, masks


# ---- tests ----
def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn at random (fresh initializations zero the sampling offsets' weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _model(encoder_levels: int | None, decoder_levels: int | None, seed: int = 0) -> HFMask2Former:
    torch.manual_seed(seed)
    model = HFMask2Former(
        checkpoint=None,
        num_classes=K,
        config=CONFIG,
        encoder_feature_levels=encoder_levels,
        decoder_feature_levels=decoder_levels,
    )
    _randomize(model, seed)
    return model.eval()


def _features(seed: int = 3) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    chans, sizes = [16, 32, 64, 128], [(16, 24), (8, 12), (4, 6), (2, 3)]  # a 64x96 image at strides 4..32
    return [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(chans, sizes)]


@pytest.mark.parametrize(
    ("encoder_levels", "decoder_levels"),
    [(1, 1), (1, 3), (3, 3), (2, 2)],
    ids=["rba_res5", "original_code_res5", "default", "two_levels"],
)
def test_pixel_decoder_equals_the_original_code(encoder_levels: int, decoder_levels: int) -> None:
    model = _model(encoder_levels, decoder_levels)
    decoder = model.model.model.pixel_level_module.decoder
    w = _to_detectron2(model.model.state_dict())
    feats = _features()
    with torch.no_grad():
        ours = decoder(feats)
        mask_ref, scales_ref = original_pixel_decoder(w, feats, encoder_levels, decoder_levels, 32, 2, 2)
    assert len(ours.multi_scale_features) == len(scales_ref) == decoder_levels
    for a, b in zip(ours.multi_scale_features, scales_ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.mask_features, mask_ref, atol=1e-5, rtol=1e-5)
    # coarsest first: 1/32 (the encoder's res5), then 1/16 and 1/8
    assert [tuple(s.shape[-2:]) for s in scales_ref] == [(2, 3), (4, 6), (8, 12)][:decoder_levels]
    assert tuple(ours.mask_features.shape[-2:]) == (16, 24)


def test_three_levels_are_transformers_own_model() -> None:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    ours = _model(None, None)
    theirs = Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(num_labels=K, use_pretrained_backbone=False, **CONFIG)
    ).eval()
    assert type(ours.model.model.pixel_level_module.decoder) is type(theirs.model.pixel_level_module.decoder)
    theirs.load_state_dict(ours.model.state_dict())
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(images).mask_logits, theirs(pixel_values=images).masks_queries_logits)


@pytest.mark.parametrize(("encoder_levels", "decoder_levels"), [(1, 1), (1, 3)], ids=["rba", "original_code"])
def test_transformer_decoder_equals_the_original_code(encoder_levels: int, decoder_levels: int) -> None:
    model = _model(encoder_levels, decoder_levels, seed=1)
    w = _to_detectron2(model.model.state_dict())
    feats = _features(seed=4)
    inner = model.model.model
    with torch.no_grad():
        mask_features, scales = original_pixel_decoder(w, feats, encoder_levels, decoder_levels, 32, 2, 2)
        cls_ref, masks_ref = original_transformer_decoder(w, scales, mask_features, decoder_levels, 32, 2, 1)
        pixel = inner.pixel_level_module.decoder(feats)
        out = inner.transformer_module(pixel.multi_scale_features, pixel.mask_features, output_hidden_states=True)
        cls = model.model.class_predictor(out.intermediate_hidden_states[-1].transpose(0, 1))
    torch.testing.assert_close(out.masks_queries_logits[-1], masks_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cls, cls_ref, atol=1e-4, rtol=1e-4)


def test_rba_structured_checkpoint_imports_and_scores_identically(tmp_path: Path) -> None:
    """One encoder level, one transformer-decoder layer (DEC_LAYERS 2), as RbA's swin_b_1dl."""
    source = _model(1, 1)
    state = _to_detectron2(source.model.state_dict())
    assert state[f"{PD}transformer.level_embed"].shape[0] == 1 and state[f"{PR}level_embed.weight"].shape[0] == 1
    assert f"{PD}adapter_3.weight" in state and f"{PR}transformer_cross_attention_layers.0.norm.weight" in state
    assert detectron2_feature_levels(state) == {"encoder_feature_levels": 1, "decoder_feature_levels": 1}
    path = tmp_path / "model_final.pth"  # RbA's layout (torch.save); the .pkl reader is tested beside the importer
    torch.save({"model": state, "iteration": 90000}, path)
    imported = HFMask2Former(
        checkpoint=None, num_classes=K, config=CONFIG, detectron2_checkpoint=str(path), encoder_feature_levels=1
    ).eval()
    images = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        a, b = source(images), imported(images)
    assert torch.equal(a.class_logits, b.class_logits) and torch.equal(a.mask_logits, b.mask_logits)
    assert len(a.aux) == 1  # the learnable queries' prediction; the one layer's is the output
    mod_a = OODSegmenter(source, num_classes=K, ood_score="rba", summary=False).eval()
    mod_b = OODSegmenter(imported, num_classes=K, ood_score="rba", summary=False).eval()
    with torch.no_grad():
        assert torch.equal(mod_a.score(mod_a(images)), mod_b.score(mod_b(images)))
    # the folder written by save_pretrained keeps the structure
    imported.model.save_pretrained(tmp_path / "hf")
    reloaded = HFMask2Former(checkpoint=str(tmp_path / "hf"), num_classes=K).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images).mask_logits, a.mask_logits)


def test_level_counts_that_differ_name_the_option(tmp_path: Path) -> None:
    path = tmp_path / "rba.pth"
    torch.save({"model": _to_detectron2(_model(1, 1).model.state_dict())}, path)
    with pytest.raises(ValueError, match=r"decoder\.level_embed.*reads 1 feature level.*encoder_feature_levels=1"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, detectron2_checkpoint=str(path))
    with pytest.raises(ValueError, match=r"transformer_module\.level_embed.*decoder_feature_levels=1"):
        HFMask2Former(
            checkpoint=None,
            num_classes=K,
            config=CONFIG,
            detectron2_checkpoint=str(path),
            encoder_feature_levels=1,
            decoder_feature_levels=3,
        )
    with pytest.raises(ValueError, match=r"encoder_feature_levels=5: expected 1\.\.4"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, encoder_feature_levels=5)
    with pytest.raises(ValueError, match=r"decoder_feature_levels=5: expected 1\.\.4"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, encoder_feature_levels=1, decoder_feature_levels=5)
    with pytest.raises(ValueError, match="config.json"):
        HFMask2Former(checkpoint=str(tmp_path), num_classes=K, encoder_feature_levels=1)


def test_one_level_model_trains() -> None:
    """A training step of the one-level model with its own criterion changes the rebuilt pixel decoder."""
    model = _model(1, 1).train()
    images, target = torch.randn(2, 3, 64, 64), torch.randint(0, K, (2, 64, 64))
    losses = model.criterion(model(images), target)
    total = sum(losses.values())
    total.backward()
    grad = model.model.model.pixel_level_module.decoder.adapter_3[0].weight.grad
    assert torch.isfinite(total) and grad is not None and grad.abs().sum() > 0


def test_backbone_checkpoint_loads_pretrained_swin_weights(tmp_path: Path) -> None:
    """RbA's MODEL.WEIGHTS for training from scratch is an ImageNet Swin: a transformers Swin checkpoint here."""
    from test_detectron2_import import SWIN
    from transformers import SwinConfig, SwinForImageClassification

    swin_args = {k: v for k, v in SWIN.items() if k not in ("model_type", "out_features")}
    torch.manual_seed(5)
    classifier = SwinForImageClassification(SwinConfig(num_labels=3, **swin_args))
    classifier.save_pretrained(tmp_path / "swin")
    model = HFMask2Former(
        checkpoint=None,
        num_classes=K,
        config=CONFIG,
        encoder_feature_levels=1,
        backbone_checkpoint=str(tmp_path / "swin"),
    )
    ours = model.model.model.pixel_level_module.encoder.swin.state_dict()
    theirs = classifier.swin.state_dict()
    assert ours.keys() <= theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    wider = SwinForImageClassification(SwinConfig(num_labels=3, **{**swin_args, "embed_dim": 32}))
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(ValueError, match=r"backbone_checkpoint .*wider.*embeddings\.patch_embeddings\.projection"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, backbone_checkpoint=str(tmp_path / "wider"))
    with pytest.raises(ValueError, match="cannot load a transformers Swin checkpoint"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, backbone_checkpoint=str(tmp_path / "none"))


def test_zero_levels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"encoder_feature_levels=0: expected 1\.\.4"):
        HFMask2Former(checkpoint=None, num_classes=K, config=CONFIG, encoder_feature_levels=0)
