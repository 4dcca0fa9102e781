"""Throughput and peak memory of SD inpainting at 512x512 (fp16) for batch sizes 1-16.

    python benchmarks/bench_inpaint_gpu.py --random-weights --out benchmarks/results/inpaint_gpu.json
    python benchmarks/bench_inpaint_gpu.py --model-id stable-diffusion-v1-5/stable-diffusion-inpainting --out ...

``--random-weights`` builds SD 1.5 inpainting (UNet, VAE, CLIP text encoder) from its
published configuration with random weights: the same compute as the real checkpoint,
for machines without hub access. Each batch size runs through InpaintingEngine.inpaint
(``--path direct`` calls the diffusers pipeline itself). Reports crops/s and
``torch.cuda.max_memory_allocated``. ``--tiny --device cpu`` smoke-tests the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthrel_lightning.atomic import atomic_write_json  # noqa: E402
from synthrel_lightning.seeding import torch_generator  # noqa: E402
from synthrel_lightning.synthesis.engine import InpaintingEngine  # noqa: E402


def build_random_sd15_inpaint() -> Any:
    """SD 1.5 inpainting with random weights, from the published configs of its components."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synthrel_lightning.testing import build_tiny_tokenizer

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        act_fn="silu",
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        mid_block_scale_factor=1,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    # The tokenizer's vocabulary does not change the compute: prompts are padded to 77 tokens.
    tokenizer = build_tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
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
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep over batch sizes and return (and optionally write) the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--random-weights", action="store_true", help="full-size SD 1.5 inpainting with random weights")
    src.add_argument("--model-id", default=None, help="an SD inpainting checkpoint (hub id or folder)")
    src.add_argument("--tiny", action="store_true", help="the tiny test pipeline (smoke test)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (the paper's default is 50)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--path", default="engine", choices=["engine", "direct"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if not (a.random_weights or a.model_id or a.tiny):
        p.error("choose --random-weights, --model-id ID or --tiny")
    device = torch.device(a.device)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[a.dtype]
    if a.model_id:
        engine = InpaintingEngine(
            model_id=a.model_id, device=a.device, dtype=a.dtype, num_inference_steps=a.steps, resolution=a.resolution
        )
        pipe = engine.pipeline
    else:
        if a.tiny:
            from synthrel_lightning.testing import build_tiny_inpaint_pipeline

            pipe = build_tiny_inpaint_pipeline(0)
        else:
            pipe = build_random_sd15_inpaint()
        pipe = pipe.to(device, torch_dtype)
        engine = InpaintingEngine(
            pipeline=pipe, device=a.device, dtype=a.dtype, num_inference_steps=a.steps, resolution=a.resolution
        )
    pipe.set_progress_bar_config(disable=True)
    cuda = device.type == "cuda"
    rows = []
    res = a.resolution
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        engine.batch_size = bs
        images = torch.rand(bs, 3, res, res, generator=torch.Generator().manual_seed(bs))
        masks = torch.zeros(bs, 1, res, res)
        masks[..., res // 6 : 5 * res // 6, res // 6 : 5 * res // 6] = 1.0
        prompts = ["A photo of an elephant"] * bs

        def run(bs: int = bs, images: torch.Tensor = images, masks: torch.Tensor = masks, prompts=prompts) -> None:
            gens = [torch_generator(0, bs, i) for i in range(bs)]
            if a.path == "engine":
                engine.inpaint(images, masks, prompts, gens)
            else:
                with torch.inference_mode():
                    pipe(
                        prompt=prompts,
                        image=images.to(device, torch_dtype),
                        mask_image=masks.to(device, torch_dtype),
                        height=res,
                        width=res,
                        num_inference_steps=a.steps,
                        guidance_scale=15.0,
                        generator=gens,
                        output_type="pt",
                    )

        row: dict[str, Any] = {"batch_size": bs}
        try:
            run()  # warm-up (kernels, allocator)
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(a.repeats):
                run()
            if cuda:
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            row.update(
                seconds_per_batch=dt / a.repeats,
                crops_per_s=bs * a.repeats / dt,
                peak_memory_gib=(torch.cuda.max_memory_allocated(device) / 2**30) if cuda else None,
            )
        except torch.cuda.OutOfMemoryError as e:  # report and go on: the largest batch may not fit
            row.update(error=f"out of memory: {e}".splitlines()[0])
            torch.cuda.empty_cache()
        print(json.dumps(row))
        rows.append(row)
    result = {
        "benchmark": "inpaint_gpu_throughput",
        "model": a.model_id or ("tiny-random" if a.tiny else "SD 1.5 inpainting, random weights (published config)"),
        "device": torch.cuda.get_device_name(device) if cuda else str(device),
        "dtype": a.dtype,
        "resolution": res,
        "steps": a.steps,
        "guidance_scale": 15.0,
        "path": a.path,
        "repeats": a.repeats,
        "torch": torch.__version__,
        "engine_stats": dict(engine.stats),
        "rows": rows,
    }
    if a.out:
        atomic_write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
