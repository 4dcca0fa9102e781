"""ControlNet fine-tuning step time (and peak memory on CUDA): ControlNetFineTuning's denoising loss + backward + AdamW.

``--model tiny`` (CPU-sized): the tiny random SD of ``synthrel_lightning.testing``.
``--model sd15``: the Stable Diffusion 1.5 architecture (UNet, VAE, CLIP ViT-L/14 text encoder)
built from its configuration with random weights (no download), ControlNet from the UNet,
for the full-size cost: e.g. 512 px, batch 4, bf16 frozen parts + autocast, with and
without gradient checkpointing::

    python benchmarks/bench_controlnet_step.py --model tiny --resolution 64 --batch 2 --iters 5
    python benchmarks/bench_controlnet_step.py --model sd15 --resolution 512 --batch 4 --dtype bfloat16 \
        --device cuda --iters 10 --checkpointing both
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.generators.controlnet_module import ControlNetFineTuning
from synthrel_lightning.seeding import torch_generator


def sd15_components() -> dict[str, Any]:
    """SD 1.5's UNet, VAE and text encoder architectures with random weights (byte-level tiny tokenizer)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from synthrel_lightning.testing import build_tiny_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       max_position_embeddings=77, vocab_size=49408)
    )  # fmt: skip
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": build_tiny_tokenizer(), "scheduler": scheduler}


def build(model: str, checkpointing: bool) -> ControlNetFineTuning:
    """The module under test."""
    if model == "tiny":
        from synthrel_lightning.testing import build_tiny_components

        parts = build_tiny_components(0, unet_in_channels=4)
        return ControlNetFineTuning(
            base_model=parts, conditioning_embedding_out_channels=(16, 32), gradient_checkpointing=checkpointing
        )
    return ControlNetFineTuning(base_model=sd15_components(), gradient_checkpointing=checkpointing)


def time_steps(args: argparse.Namespace, checkpointing: bool) -> dict[str, Any]:
    """Seconds per optimizer step (median over ``iters`` after warm-up) and peak CUDA memory."""
    device = torch.device(args.device)
    module = build(args.model, checkpointing)
    dtype = getattr(torch, args.dtype)
    for frozen in (module.vae, module.text_encoder, module.unet):
        frozen.to(device)
        if dtype != torch.float32:
            frozen.to(dtype=dtype)
    module.controlnet.to(device)
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=1e-5, fused=device.type == "cuda")
    r = args.resolution
    batch = {
        "pixel_values": torch.rand(args.batch, 3, r, r) * 2 - 1,
        "conditioning": (torch.randint(0, 34, (args.batch, 1, r, r)).float() + 1) / 34,
        "caption": ["a city street with cars, in fog"] * args.batch,
    }
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with autocast:
            loss = module.denoising_loss(batch, torch_generator(0, "bench", i))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"gradient_checkpointing": checkpointing, "s_per_step": statistics.median(times), "peak_gib": peak}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    """Run the benchmark and write the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--checkpointing", choices=("off", "on", "both"), default="off")
    p.add_argument("--out", default="benchmarks/results/controlnet_step.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    runs = [time_steps(args, c) for c in modes]
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name()
    record = {
        "benchmark": "controlnet_step",
        "model": args.model,
        "resolution": args.resolution,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": device_name,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    atomic_write_json(Path(args.out), record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
