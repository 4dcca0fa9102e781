"""Tiny randomly initialised models built offline: try the generation tools without a GPU or the hub.

The builders make real diffusers/transformers pipelines (Stable Diffusion inpainting,
ControlNet, OWLv2, SAM) with random weights at a size that runs in well under a second
per call on a CPU. Their outputs are noise-like images, not objects: they exercise the
whole data flow (tests, benchmarks of the wrapper's overhead, a first run of ``generate``).

From the command line, :class:`TinyInpaintingEngine` is the engine to name::

    python -m synthrel_lightning generate --bank out/bank \
        --source synthrel_lightning.data.CityscapesDataset --source.root <root> --source.split val \
        --engine synthrel_lightning.testing.TinyInpaintingEngine --devices 1 --accelerator cpu
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from synthrel_lightning.synthesis.engine import InpaintingEngine

__all__ = [
    "FaultySource",
    "TinyInpaintingEngine",
    "build_tiny_tokenizer",
    "build_tiny_components",
    "build_tiny_inpaint_pipeline",
    "build_tiny_controlnet_pipeline",
    "build_tiny_controlnet",
    "save_tiny_pipeline",
    "build_tiny_owlv2",
    "build_tiny_sam",
]

_TINY_BLOCKS = (32, 64)
_CROSS_DIM = 32


def _byte_characters() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_tokenizer(
    folder: str | os.PathLike[str] | None = None, specials_first: bool = True, model_max_length: int = 77
) -> Any:
    """A byte-level CLIPTokenizer (no merges) written to ``folder`` (a temp folder if None) and loaded offline.

    ``specials_first=False`` puts ``<|startoftext|>``/``<|endoftext|>`` at the end of the vocabulary,
    as in real CLIP (OWL models treat a query whose first token id is 0 as padding).
    """
    from transformers import CLIPTokenizer

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="tiny_clip_tok_"))
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = []
    for ch in _byte_characters():
        tokens += [ch, ch + "</w>"]
    tokens = specials + tokens if specials_first else tokens + specials
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    # Without model_max_length the tokenizer pads prompts to 1e30 tokens.
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)


def build_tiny_controlnet(seed: int = 0) -> Any:
    """A tiny ControlNetModel matching the tiny UNet's block sizes."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    model = ControlNetModel(
        block_out_channels=_TINY_BLOCKS,
        layers_per_block=2,
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=_CROSS_DIM,
        conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=32,
    )
    # A fresh ControlNet's output convolutions are zero (it starts as a no-op); give them
    # random weights so that the conditioning image actually steers the tiny model.
    with torch.no_grad():
        for conv in [
            *model.controlnet_down_blocks,
            model.controlnet_mid_block,
            model.controlnet_cond_embedding.conv_out,
        ]:
            torch.nn.init.normal_(conv.weight, std=0.1)
    return model


def build_tiny_components(seed: int = 0, unet_in_channels: int = 9) -> dict[str, Any]:
    """UNet, VAE, text encoder, tokenizer and DDIM scheduler of a tiny SD model (``unet_in_channels`` 9: inpainting)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=_TINY_BLOCKS,
        layers_per_block=2,
        sample_size=32,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_CROSS_DIM,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=_CROSS_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def build_tiny_inpaint_pipeline(seed: int = 0, controlnet: bool = False) -> Any:
    """A tiny StableDiffusionInpaintPipeline (or StableDiffusionControlNetInpaintPipeline) with random weights."""
    from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionInpaintPipeline

    parts = build_tiny_components(seed, unet_in_channels=9)
    common = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if controlnet:
        pipe = StableDiffusionControlNetInpaintPipeline(**parts, controlnet=build_tiny_controlnet(seed + 3), **common)
    else:
        pipe = StableDiffusionInpaintPipeline(**parts, **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_controlnet_pipeline(seed: int = 0) -> Any:
    """A tiny text-to-image StableDiffusionControlNetPipeline (label-map conditioning) with random weights."""
    from diffusers import StableDiffusionControlNetPipeline

    parts = build_tiny_components(seed, unet_in_channels=4)
    pipe = StableDiffusionControlNetPipeline(
        **parts,
        controlnet=build_tiny_controlnet(seed + 3),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(folder: str | os.PathLike[str], kind: str = "inpaint", seed: int = 0) -> Path:
    """Build a tiny pipeline (``kind`` "inpaint" or "controlnet") and ``save_pretrained`` it to ``folder``.

    For "controlnet" the base pipeline is saved in ``folder`` and its ControlNet in
    ``folder/controlnet`` so both load through ``from_pretrained`` like hub checkpoints.
    """
    folder = Path(folder)
    if kind == "inpaint":
        build_tiny_inpaint_pipeline(seed).save_pretrained(str(folder))
    elif kind == "controlnet":
        pipe = build_tiny_controlnet_pipeline(seed)
        pipe.controlnet.save_pretrained(str(folder / "controlnet"))
        from diffusers import StableDiffusionPipeline

        base = StableDiffusionPipeline(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            unet=pipe.unet,
            scheduler=pipe.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        base.save_pretrained(str(folder))
    else:
        raise ValueError(f"save_tiny_pipeline: kind must be 'inpaint' or 'controlnet', got {kind!r}")
    return folder


def tiny_swin_config(depths: Sequence[int] = (1, 1, 1, 1), num_heads: Sequence[int] = (1, 1, 1, 1)) -> dict[str, Any]:
    """A tiny transformers Swin backbone config (4 stages, as in Mask2Former's and OneFormer's checkpoints)."""
    return {
        "model_type": "swin",
        "embed_dim": 16,
        "depths": list(depths),
        "num_heads": list(num_heads),
        "window_size": 4,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    }


def tiny_mask2former_config(
    decoder_layers: int = 2, encoder_layers: int = 1, swin: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments of a tiny ``Mask2FormerConfig`` with the real model's structure (Swin, 8 queries)."""
    return {
        "backbone_config": swin if swin is not None else tiny_swin_config(),
        "hidden_dim": 32,
        "mask_feature_size": 32,
        "feature_size": 32,
        "num_queries": 8,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_feedforward_dim": 32,
        "dim_feedforward": 32,
        "num_attention_heads": 2,
        "train_num_points": 64,
    }


def tiny_oneformer_config(decoder_layers: int = 2) -> dict[str, Any]:
    """Keyword arguments of a tiny ``OneFormerConfig`` with the real model's structure (Swin, text encoder)."""
    return {
        "backbone_config": tiny_swin_config(),
        "hidden_dim": 32,
        "mask_dim": 32,
        "conv_dim": 32,
        "num_queries": 8,
        "encoder_layers": 1,
        "decoder_layers": decoder_layers,
        "encoder_feedforward_dim": 32,
        "dim_feedforward": 32,
        "num_attention_heads": 2,
        "train_num_points": 64,
        "task_seq_len": 8,
        "text_encoder_width": 32,
        "text_encoder_num_layers": 1,
        "text_encoder_context_length": 8,
        "text_encoder_proj_layers": 1,
        "text_encoder_n_ctx": 2,
    }


def build_tiny_owlv2(seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """A tiny random Owlv2ForObjectDetection and its Owlv2Processor (offline tokenizer)."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tok = build_tiny_tokenizer(specials_first=False, model_max_length=16)
    n = len(tok)
    config = Owlv2Config(
        text_config=dict(
            vocab_size=n, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=16, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=image_size, patch_size=16),
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": image_size, "width": image_size}), tokenizer=tok
    )
    return model, processor


def build_tiny_sam(seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """A tiny random SamModel and its SamProcessor."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    config = SamConfig(
        vision_config=dict(
            hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=image_size,
            patch_size=8, window_size=4, global_attn_indexes=[1], mlp_dim=64, num_pos_feats=8,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=image_size, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=16),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    low = image_size // 4
    processor = SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": low},
            mask_pad_size={"height": low, "width": low},
        )
    )
    return model, processor


class TinyInpaintingEngine(InpaintingEngine):
    """An :class:`~synthrel_lightning.synthesis.engine.InpaintingEngine` on a tiny random pipeline (offline, CPU).

    The defaults run fast on a laptop CPU: 2 denoising steps at 64 px, float32, changed-pixels masks.
    Any engine option can still be given (``refine``, ``guidance_scale``, ...).
    """

    def __init__(
        self,
        seed: int = 0,
        device: str = "cpu",
        num_inference_steps: int = 2,
        resolution: int = 64,
        mask_method: str = "changed",
        **engine_options: Any,
    ) -> None:
        super().__init__(
            model_id="tiny-random-sd-inpainting",
            device=device,
            dtype="float32",
            num_inference_steps=num_inference_steps,
            resolution=resolution,
            mask_method=mask_method,
            pipeline=build_tiny_inpaint_pipeline(seed),
            **engine_options,
        )


class FaultySource:
    """Procedural outliers that fail on chosen calls and take ``delay_s`` each: to watch failure handling at work.

    Picklable and importable, so it can be built in a background process through a ProducerSpec.
    """

    def __init__(self, fail_calls: tuple[int, ...] = (1,), delay_s: float = 0.0, size_range: tuple[int, int] = (8, 16)):
        self.fail_calls = tuple(int(c) for c in fail_calls)
        self.delay_s = float(delay_s)
        self.size_range = (size_range[0], size_range[1])
        self.calls = 0

    def sample(self, rng: Any) -> Any:
        """The next outlier, or a RuntimeError on the calls listed in ``fail_calls`` (0-based)."""
        import time

        from synthrel_lightning.synthesis.sources.procedural import ProceduralObjectSource

        call, self.calls = self.calls, self.calls + 1
        time.sleep(self.delay_s)
        if call in self.fail_calls:
            raise RuntimeError(f"simulated producer failure on call {call}")
        return ProceduralObjectSource(size_range=self.size_range).sample(rng)
