"""Overhead of InpaintingEngine.inpaint over calling the diffusers pipeline directly on the same batch.

Default: the tiny random pipeline on CPU (64x64). Real SD on a GPU:
    python benchmarks/bench_inpaint_wrapper.py --model-id stable-diffusion-v1-5/stable-diffusion-inpainting \
        --device cuda --dtype float16 --resolution 512 --steps 20 --out benchmarks/results/inpaint_wrapper_gpu.json
(``--model-id random-sd15`` builds full-size SD 1.5 inpainting with random weights, no hub needed.)
Both paths run the same batch with the same per-sample seeds, interleaved, and the
median wall time of each is compared; the target is <= 10% overhead. It also times the
whole frame protocol (crop, blur mask, inpaint, paste, mask) for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthrel_lightning.atomic import atomic_write_json  # noqa: E402
from synthrel_lightning.seeding import torch_generator  # noqa: E402
from synthrel_lightning.synthesis.engine import InpaintingEngine  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipeline(model_id: str | None, device: str, dtype: str) -> object:
    """The pipeline under test: tiny random (None), full-size random SD 1.5 ("random-sd15"), or a checkpoint."""
    if model_id is None:
        from synthrel_lightning.testing import build_tiny_inpaint_pipeline

        pipe = build_tiny_inpaint_pipeline(0)
    elif model_id == "random-sd15":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_inpaint_gpu import build_random_sd15_inpaint

        pipe = build_random_sd15_inpaint()
    else:
        return InpaintingEngine(model_id=model_id, device=device, dtype=dtype).pipeline
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    return pipe.to(device, torch_dtype)


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison and return (and optionally write) the results."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-id", default=None, help="checkpoint id/folder, 'random-sd15', or omit for the tiny pipeline"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) or 512")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = a.resolution or (64 if a.model_id is None else 512)
    device = torch.device(a.device)
    pipe = build_pipeline(a.model_id, a.device, a.dtype)
    pipe.set_progress_bar_config(disable=True)
    engine = InpaintingEngine(
        pipeline=pipe,
        device=a.device,
        dtype=a.dtype,
        batch_size=a.batch_size,
        num_inference_steps=a.steps,
        resolution=res,
        guidance_scale=15.0,
    )
    b = a.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, res, res, generator=g)
    masks = torch.zeros(b, 1, res, res)
    masks[..., res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = 1.0
    prompts = [engine.prompt_for(o) for o in ("elephant", "lion", "sofa", "zebra")] * (b // 4 + 1)
    prompts = prompts[:b]
    dtype = engine.dtype

    def direct() -> torch.Tensor:
        with torch.inference_mode():
            out = pipe(
                prompt=prompts,
                image=images.to(device, dtype),
                mask_image=masks.to(device, dtype),
                height=res,
                width=res,
                num_inference_steps=a.steps,
                guidance_scale=15.0,
                strength=1.0,
                generator=[torch_generator(1, i) for i in range(b)],
                output_type="pt",
            ).images
        return out.float().cpu()

    def wrapped() -> torch.Tensor:
        return engine.inpaint(images, masks, prompts, [torch_generator(1, i) for i in range(b)]).images

    frame = (np.random.default_rng(0).random((res * 2, res * 4, 3)) * 255).astype(np.uint8)
    side = int(res / 1.5) // 8 * 8 or 8

    def protocol() -> None:
        engine.synthesize_batch(
            [frame] * b, [(res // 2 + 16 * i, res // 2, side) for i in range(b)], ["lion"] * b, list(range(b))
        )

    for _ in range(a.warmup):
        direct()
        wrapped()
    t_direct, t_wrapped, t_protocol = [], [], []
    for _ in range(a.repeats):
        for fn, acc in ((direct, t_direct), (wrapped, t_wrapped)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            acc.append(time.perf_counter() - t0)
    for _ in range(max(1, a.repeats // 2)):
        t0 = time.perf_counter()
        protocol()
        _sync(device)
        t_protocol.append(time.perf_counter() - t0)
    same = torch.allclose(direct(), wrapped(), atol=1e-5)
    md, mw = statistics.median(t_direct), statistics.median(t_wrapped)
    result = {
        "benchmark": "inpaint_wrapper_overhead",
        "model": a.model_id or "tiny-random (REFERENCE.md §6 config)",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": a.dtype,
        "resolution": res,
        "batch_size": b,
        "steps": a.steps,
        "repeats": a.repeats,
        "torch_threads": torch.get_num_threads(),
        "direct_s_median": md,
        "engine_s_median": mw,
        "overhead_pct": 100.0 * (mw - md) / md,
        "direct_s_all": t_direct,
        "engine_s_all": t_wrapped,
        "protocol_s_median": statistics.median(t_protocol),
        "outputs_identical": bool(same),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_all")}, indent=2))
    if a.out:
        atomic_write_json(a.out, result)
    return result


if __name__ == "__main__":
    main()
