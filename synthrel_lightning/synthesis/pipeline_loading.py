"""Loading Stable Diffusion inpainting pipelines with diffusers: checkpoint checks, dtypes, ControlNet, LoRA, scheduler.

diffusers is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_INPAINT_MODEL",
    "DTYPES",
    "ModelLoadError",
    "check_source",
    "configure_pipeline",
    "load_inpaint_pipeline",
]

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
"""SD 1.5 inpainting, the paper's model."""

DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


class ModelLoadError(OSError):
    """A checkpoint could not be loaded (unknown hub id, folder without model_index.json, wrong model type)."""


def check_source(ident: str, what: str) -> None:
    """Fail with :class:`ModelLoadError` when ``ident`` looks like a local path but is no (pipeline) folder.

    Hub ids are "owner/name"; anything else that looks like a path must be an existing folder, and an
    inpainting checkpoint's folder (``what`` starting with "inpainting") must hold ``model_index.json``.
    """
    path = Path(ident).expanduser()
    looks_local = (
        path.is_absolute() or ident.startswith((".", "~")) or ident.count("/") > 1 or os.sep in ident.replace("/", "")
    )
    if path.exists() or looks_local:
        if not path.is_dir():
            raise ModelLoadError(
                f"{what} {ident!r}: folder not found; expected a Hugging Face hub id (owner/name) "
                f"or a local folder saved with save_pretrained"
            )
        if what.startswith("inpainting") and not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{what} {ident!r}: the folder has no model_index.json; expected a diffusers "
                f"pipeline folder (save_pretrained output) or a hub id"
            )


def load_inpaint_pipeline(
    model_id: str,
    dtype: torch.dtype,
    device: torch.device,
    controlnet_id: str | None = None,
    lora: str | None = None,
    cpu_offload: bool = False,
) -> Any:
    """A diffusers inpainting pipeline (with ControlNet when ``controlnet_id``), safety checker off, on ``device``.

    Raises :class:`ModelLoadError` for an unknown id, a folder that is no pipeline, or a checkpoint whose
    UNet does not take the 9 input channels of inpainting.
    """
    import diffusers

    check_source(model_id, "inpainting checkpoint")
    kwargs: dict[str, Any] = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    cls: Any = diffusers.StableDiffusionInpaintPipeline
    if controlnet_id:
        check_source(controlnet_id, "ControlNet checkpoint")
        try:
            kwargs["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet_id, dtype=dtype)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"could not load ControlNet {controlnet_id!r}: expected a hub id or a ControlNetModel folder ({e})"
            ) from e
        cls = diffusers.StableDiffusionControlNetInpaintPipeline
    try:
        pipe = cls.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load inpainting checkpoint {model_id!r}: expected a Hugging Face hub id "
            f"(e.g. {DEFAULT_INPAINT_MODEL!r}) or a local folder with model_index.json ({type(e).__name__}: {e})"
        ) from e
    in_ch = getattr(pipe.unet.config, "in_channels", 9)
    if in_ch != 9:
        raise ModelLoadError(
            f"{model_id!r} is not an inpainting checkpoint: its UNet takes {in_ch} input channels, inpainting needs 9"
        )
    if lora:
        pipe.load_lora_weights(lora)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device if device.type != "cpu" else None)
    else:
        pipe.to(device)
    return pipe


def configure_pipeline(pipe: Any, scheduler: str | None = None) -> None:
    """Swap in the diffusers scheduler named ``scheduler`` ("DDIM" or "DDIMScheduler", ...) and hide progress bars."""
    if scheduler:
        import diffusers

        name = scheduler if scheduler.endswith("Scheduler") else f"{scheduler}Scheduler"
        cls = getattr(diffusers, name, None)
        if cls is None:
            raise ValueError(
                f"unknown scheduler {scheduler!r}: diffusers has no {name} (e.g. 'DDIM', 'DPMSolverMultistep', 'LCM')"
            )
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
