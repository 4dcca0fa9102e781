"""Stable Diffusion inpainting of objects into street frames (a wrapper around diffusers' pipelines).

:class:`InpaintingEngine` wraps ``StableDiffusionInpaintPipeline`` (or
``StableDiffusionControlNetInpaintPipeline`` with ``controlnet_id``) and implements the
protocol of Loiseau et al. (ECCV 2024, arXiv 2312.09231; github.com/valeoai/GenVal) on whole
frames: context crop, box-blurred box mask (diffusers binarises it at 0.5, so the model sees a
box with rounded corners, not a soft mask), inpainting, paste-back of the central square, the
refinement pass over the full frame, object mask.
Outputs that are NaN or black (fp16 overflow, a safety checker) are retried with new
seeds and then skipped; every outcome is counted in :attr:`InpaintingEngine.stats`.

This module holds the engine's settings, its lazy pipeline and the batched, retried :meth:`InpaintingEngine.inpaint`;
the whole-frame protocol is in :mod:`~synthrel_lightning.synthesis.frame_inpainting`, pipeline loading in
:mod:`~synthrel_lightning.synthesis.pipeline_loading`, the result types in
:mod:`~synthrel_lightning.synthesis.inpaint_result`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from synthrel_lightning.devices import resolve_device
from synthrel_lightning.seeding import torch_generator
from synthrel_lightning.synthesis.frame_inpainting import FrameInpainting
from synthrel_lightning.synthesis.inpaint_result import InpaintOutput, InpaintResult, output_problem
from synthrel_lightning.synthesis.object_masks import MaskRules, ObjectMasker, build_masker
from synthrel_lightning.synthesis.pipeline_loading import (
    DEFAULT_INPAINT_MODEL,
    DTYPES,
    ModelLoadError,
    configure_pipeline,
    load_inpaint_pipeline,
)
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry, article, as_vocabulary_entry

__all__ = [
    "DEFAULT_INPAINT_MODEL",
    "InpaintingEngine",
    "InpaintOutput",
    "InpaintResult",
    "ModelLoadError",
    "output_problem",
]

log = logging.getLogger(__name__)


class InpaintingEngine(FrameInpainting):
    """Inpaints objects into frames with a diffusers Stable Diffusion inpainting pipeline (loaded lazily)."""

    def __init__(
        self,
        model_id: str = DEFAULT_INPAINT_MODEL,
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 4,
        num_inference_steps: int = 50,
        guidance_scale: float = 15.0,
        strength: float = 1.0,
        scheduler: str | None = None,
        lora: str | None = None,
        cpu_offload: bool = False,
        prompt_template: str = "A photo of a{n} {object}",
        negative_prompt: str | None = None,
        controlnet_id: str | None = None,
        control: str = "inpaint",
        refine: bool = False,
        refine_strength: float = 0.65,
        refine_guidance_scale: float = 7.5,
        refine_region: str = "frame",
        refine_max_side: int | None = None,
        resolution: int = 512,
        context_scale: float = 1.5,
        blur_kernel: int = 128,
        max_retries: int = 2,
        mask_method: str | ObjectMasker = "box",
        mask_rules: MaskRules | None = None,
        feather_sigma: float = 0.02,
        pipeline: Any = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"InpaintingEngine dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        resolved = resolve_device(device, who="InpaintingEngine")
        if resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (Stable Diffusion's VAE factor), got {resolution}")
        if refine_region not in ("frame", "crop"):
            raise ValueError(f"refine_region must be 'frame' or 'crop', got {refine_region!r}")
        if refine_max_side is not None and refine_max_side < 8:
            raise ValueError(f"refine_max_side must be >= 8 or None (full resolution), got {refine_max_side}")
        if control not in ("inpaint", "segmentation"):
            raise ValueError(
                f"control must be 'inpaint' (masked image) or 'segmentation' (label colours), got {control!r}"
            )
        if batch_size < 1 or num_inference_steps < 1 or max_retries < 0:
            raise ValueError("batch_size and num_inference_steps must be >= 1 and max_retries >= 0")
        if cpu_offload and resolved.type == "cpu":
            raise ValueError(
                "cpu_offload=True offloads to the CPU between GPU calls; it needs "
                "device='cuda' or 'auto' on a GPU machine"
            )
        if "{object}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{object}}', got {prompt_template!r}")
        self.model_id = str(model_id)
        self.device = resolved
        self.dtype = DTYPES[dtype]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            # Half precision convolutions are slow or unsupported on CPUs.
            log.warning("InpaintingEngine: float16 on CPU is not supported well; using float32")
            self.dtype = torch.float32
        self.batch_size = int(batch_size)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.strength = float(strength)
        self.scheduler = scheduler
        self.lora = lora
        self.cpu_offload = bool(cpu_offload)
        self.prompt_template = prompt_template
        self.negative_prompt = negative_prompt
        self.controlnet_id = controlnet_id
        self.control = control
        self.refine = bool(refine)
        self.refine_strength = float(refine_strength)
        self.refine_guidance_scale = float(refine_guidance_scale)
        self.refine_region = refine_region
        self.refine_max_side = None if refine_max_side is None else int(refine_max_side)
        self.resolution = int(resolution)
        self.context_scale = float(context_scale)
        # The paper's 128-pixel kernel is defined at 512; keep the same relative width.
        self.blur_kernel = max(1, int(round(blur_kernel * self.resolution / 512)))
        self.max_retries = int(max_retries)
        self.masker = build_masker(mask_method, rules=mask_rules)
        self.feather_sigma = float(feather_sigma)
        self._pipeline = pipeline
        if pipeline is not None:
            self._configure(pipeline)
        self.stats: dict[str, int] = {
            "calls": 0,
            "samples": 0,
            "inpainted": 0,
            "retries": 0,
            "skipped": 0,
            "refined": 0,
            "refine_failed": 0,
            "mask_rejected": 0,
        }

    # -- loading -----------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        """Whether the diffusers pipeline is loaded (it loads on first use)."""
        return self._pipeline is not None

    def to(self, device: str | torch.device) -> InpaintingEngine:
        """Run on ``device`` from now on (a loaded pipeline is moved there); returns the engine."""
        self.device = resolve_device(device, who="InpaintingEngine")
        if self._pipeline is not None and not self.cpu_offload:
            self._pipeline.to(self.device)
        return self

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline, loaded on first access."""
        if self._pipeline is None:
            self._pipeline = self._load()
            self._configure(self._pipeline)
        return self._pipeline

    def _load(self) -> Any:
        return load_inpaint_pipeline(
            self.model_id, self.dtype, self.device, self.controlnet_id, lora=self.lora, cpu_offload=self.cpu_offload
        )

    def _configure(self, pipe: Any) -> None:
        configure_pipeline(pipe, self.scheduler)

    # -- prompts -----------------------------------------------------------------------
    def prompt_for(self, obj: str | VocabularyEntry) -> str:
        """The prompt for an object: its own prompt, else the template with the right article."""
        entry = as_vocabulary_entry(obj)
        if entry.prompt:
            return entry.prompt
        n = "n" if article(entry.name) == "an" else ""
        return self.prompt_template.replace("{n}", n).replace("{object}", entry.name)

    # -- batched inpainting ------------------------------------------------------------
    def pipeline_call(self, **kwargs: Any) -> torch.Tensor:
        """One call of the diffusers pipeline with ``kwargs`` (its own argument names); (B, 3, H, W) images.

        Every inpainting pass goes through here: subclasses may override it to record or alter calls.
        """
        with torch.inference_mode():
            return self.pipeline(**kwargs).images

    def _call(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        prompts: list[str],
        generators: list[torch.Generator],
        strength: float,
        control: torch.Tensor | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        pipe = self.pipeline
        h, w = images.shape[-2:]
        # Hand the pipeline tensors already on its execution device (it would copy them itself otherwise).
        dev = getattr(pipe, "_execution_device", self.device)
        kwargs: dict[str, Any] = dict(
            prompt=prompts,
            image=images.to(dev),
            mask_image=masks.to(dev),
            height=int(h),
            width=int(w),
            num_inference_steps=self.num_inference_steps,
            guidance_scale=guidance_scale,
            strength=strength,
            generator=generators,
            output_type="pt",
        )
        if self.negative_prompt:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(prompts)
        if control is not None:
            kwargs["control_image"] = control.to(dev)
        self.stats["calls"] += 1
        return self.pipeline_call(**kwargs).float().cpu()

    def inpaint(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        prompts: Sequence[str],
        generators: Sequence[torch.Generator],
        strength: float | None = None,
        control_images: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> InpaintOutput:
        """Inpaint a batch: images (B, 3, H, W) in [0, 1], masks (B, 1, H, W) (1 = repaint) -> (B, 3, H, W) in [0, 1].

        diffusers binarises the masks at 0.5. ``strength``/``guidance_scale`` default to the engine's.

        Runs in chunks of ``batch_size``; NaN/black outputs are retried with fresh seeds up to
        ``max_retries`` times, then skipped (``valid`` False, the input returned, counted).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        if masks.shape != (b, 1, h, w):
            raise ValueError(f"masks must be (B, 1, H, W) = {(b, 1, h, w)}, got {tuple(masks.shape)}")
        if h % 8 or w % 8:
            raise ValueError(
                f"inpainting height and width must be multiples of 8 for Stable Diffusion, got {h}x{w}; resize first"
            )
        if len(prompts) != b or len(generators) != b:
            raise ValueError(
                f"need one prompt and one generator per image: {b} images, {len(prompts)} "
                f"prompts, {len(generators)} generators"
            )
        if control_images is not None and control_images.shape[0] != b:
            raise ValueError(f"control_images must have {b} entries, got {control_images.shape[0]}")
        strength = self.strength if strength is None else float(strength)
        guidance = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        images = images.float().clamp(0, 1)
        out = images.clone()
        valid = [False] * b
        gens = list(generators)
        base_seeds = [int(g.initial_seed()) for g in gens]
        pending = list(range(b))
        self.stats["samples"] += b
        for attempt in range(self.max_retries + 1):
            failed: list[int] = []
            for start in range(0, len(pending), self.batch_size):
                idx = pending[start : start + self.batch_size]
                res = self._call(
                    images[idx],
                    masks[idx].float(),
                    [prompts[i] for i in idx],
                    [gens[i] for i in idx],
                    strength,
                    None if control_images is None else control_images[idx],
                    guidance,
                )
                for j, i in enumerate(idx):
                    problem = output_problem(res[j])
                    if problem is None:
                        out[i] = res[j]
                        valid[i] = True
                    else:
                        log.warning(
                            "inpainting output %d (%r) is unusable (%s), attempt %d/%d",
                            i,
                            prompts[i],
                            problem,
                            attempt + 1,
                            self.max_retries + 1,
                        )
                        failed.append(i)
            pending = failed
            if not pending or attempt == self.max_retries:
                break
            self.stats["retries"] += len(pending)
            for i in pending:
                gens[i] = torch_generator(base_seeds[i], "retry", attempt + 1)
        for i in pending:
            log.warning("skipping inpainting sample %d (%r) after %d attempts", i, prompts[i], self.max_retries + 1)
        self.stats["skipped"] += len(pending)
        self.stats["inpainted"] += b - len(pending)
        return InpaintOutput(out, valid)
