"""Stable Diffusion inpainting of objects into street frames (a wrapper around diffusers' pipelines).

:class:`InpaintingEngine` wraps ``StableDiffusionInpaintPipeline`` (or
``StableDiffusionControlNetInpaintPipeline`` with ``controlnet_id``) and implements the
protocol of Loiseau et al. (ECCV 2024, arXiv 2312.09231; github.com/valeoai/GenVal) on whole
frames: context crop, box-blurred box mask (diffusers binarises it at 0.5, so the model sees a
box with rounded corners, not a soft mask), inpainting, paste-back of the central square, the
refinement pass over the full frame, object mask.
Outputs that are NaN or black (fp16 overflow, a safety checker) are retried with new
seeds and then skipped; every outcome is counted in :attr:`InpaintingEngine.stats`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from synthrel_lightning.devices import resolve_device
from synthrel_lightning.labels import OOD_ID, colorize_train_ids
from synthrel_lightning.seeding import torch_generator
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.object_masks import MaskRules, ObjectMasker, build_masker, feather
from synthrel_lightning.synthesis.protocol import (
    CropWindow,
    context_window,
    crop_to_tensor,
    paste_square,
    snap_size,
    soft_box_mask,
    to_uint8,
)
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry, article

__all__ = [
    "DEFAULT_INPAINT_MODEL",
    "InpaintingEngine",
    "InpaintOutput",
    "InpaintResult",
    "ModelLoadError",
    "output_problem",
]

log = logging.getLogger(__name__)

DEFAULT_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
"""SD 1.5 inpainting, the paper's model."""

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


class ModelLoadError(OSError):
    """A checkpoint could not be loaded (unknown hub id, folder without model_index.json, wrong model type)."""


class InpaintOutput(NamedTuple):
    """Inpainted images (B, 3, H, W) in [0, 1] and, per sample, whether it is valid (failed ones hold the input)."""

    images: torch.Tensor
    valid: list[bool]


@dataclass
class InpaintResult:
    """One inpainted object in a frame, with provenance.

    ``image`` is the new frame; ``patch`` the pasted ``side x side`` square; ``object_mask``
    the object's pixels in the square (bool) and ``alpha`` its feathered version; ``ok``
    is False (with ``reason``) when the inpainting failed or the object mask was rejected.
    """

    image: np.ndarray
    box: Box
    object_name: str
    label_value: int
    prompt: str
    seed: int
    model_id: str
    patch: np.ndarray
    object_mask: np.ndarray
    alpha: np.ndarray
    ok: bool = True
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def frame_mask(self) -> np.ndarray:
        """The object mask at frame size (bool)."""
        m = np.zeros(self.image.shape[:2], dtype=bool)
        m[self.box.slices] = self.object_mask
        return m

    def label_map(self, base: np.ndarray | None = None) -> np.ndarray:
        """``base`` (frame train ids; all void if None) with ``label_value`` written on the object's pixels."""
        out = (
            np.full(self.image.shape[:2], 255, np.uint8) if base is None else np.array(base, dtype=np.uint8, copy=True)
        )
        if out.shape != self.image.shape[:2]:
            raise ValueError(f"label map shape {out.shape} does not match the frame {self.image.shape[:2]}")
        out[self.frame_mask()] = self.label_value
        return out

    def to_entry(self, kind: str = "object", base_label: np.ndarray | None = None, source: str = "inpaint") -> Any:
        """An :class:`~synthrel_lightning.synthesis.bank.OutlierEntry` (the object crop, or the whole frame)."""
        from synthrel_lightning.synthesis.bank import OutlierEntry

        meta = dict(self.metadata, box=list(self.box))
        common: dict[str, Any] = dict(
            label_value=self.label_value,
            name=self.object_name,
            prompt=self.prompt,
            source=source,
            seed=self.seed,
            model=self.model_id,
            metadata=meta,
        )
        if kind == "object":
            return OutlierEntry(rgb=self.patch, alpha=self.alpha, kind="object", **common)
        if kind == "frame":
            return OutlierEntry(
                rgb=self.image, alpha=self.frame_mask(), kind="frame", label=self.label_map(base_label), **common
            )
        raise ValueError(f"entry kind must be 'object' or 'frame', got {kind!r}")


def output_problem(image: torch.Tensor, black_level: float = 1.0 / 255.0) -> str | None:
    """Why an inpainted image (3, H, W) in [0, 1] is unusable ("NaN/inf values", "all black"), or None."""
    if not torch.isfinite(image).all():
        return "NaN/inf values"
    if float(image.max()) <= black_level:
        return "all black"
    return None


def _object_of(obj: str | VocabularyEntry | dict) -> VocabularyEntry:
    if isinstance(obj, VocabularyEntry):
        return obj
    if isinstance(obj, dict):
        return VocabularyEntry(obj["name"], int(obj.get("label_value", OOD_ID)), obj.get("prompt"))
    return VocabularyEntry(str(obj))


class InpaintingEngine:
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
        if dtype not in _DTYPES:
            raise ValueError(f"InpaintingEngine dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
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
        self.dtype = _DTYPES[dtype]
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

    def _check_source(self, ident: str, what: str) -> None:
        path = Path(ident).expanduser()
        # Hub ids are "owner/name"; anything else that looks like a path must be an existing folder.
        looks_local = (
            path.is_absolute()
            or ident.startswith((".", "~"))
            or ident.count("/") > 1
            or os.sep in ident.replace("/", "")
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

    def _load(self) -> Any:
        import diffusers

        self._check_source(self.model_id, "inpainting checkpoint")
        kwargs: dict[str, Any] = dict(dtype=self.dtype, safety_checker=None, requires_safety_checker=False)
        cls: Any = diffusers.StableDiffusionInpaintPipeline
        if self.controlnet_id:
            self._check_source(self.controlnet_id, "ControlNet checkpoint")
            try:
                kwargs["controlnet"] = diffusers.ControlNetModel.from_pretrained(self.controlnet_id, dtype=self.dtype)
            except (OSError, ValueError) as e:
                raise ModelLoadError(
                    f"could not load ControlNet {self.controlnet_id!r}: expected a hub id "
                    f"or a ControlNetModel folder ({e})"
                ) from e
            cls = diffusers.StableDiffusionControlNetInpaintPipeline
        try:
            pipe = cls.from_pretrained(self.model_id, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"could not load inpainting checkpoint {self.model_id!r}: expected a Hugging Face hub id "
                f"(e.g. {DEFAULT_INPAINT_MODEL!r}) or a local folder with model_index.json ({type(e).__name__}: {e})"
            ) from e
        in_ch = getattr(pipe.unet.config, "in_channels", 9)
        if in_ch != 9:
            raise ModelLoadError(
                f"{self.model_id!r} is not an inpainting checkpoint: its UNet takes {in_ch} "
                f"input channels, inpainting needs 9"
            )
        if self.lora:
            pipe.load_lora_weights(self.lora)
        if self.cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device if self.device.type != "cpu" else None)
        else:
            pipe.to(self.device)
        return pipe

    def _configure(self, pipe: Any) -> None:
        if self.scheduler:
            import diffusers

            name = self.scheduler if self.scheduler.endswith("Scheduler") else f"{self.scheduler}Scheduler"
            cls = getattr(diffusers, name, None)
            if cls is None:
                raise ValueError(
                    f"unknown scheduler {self.scheduler!r}: diffusers has no {name} (e.g. "
                    f"'DDIM', 'DPMSolverMultistep', 'LCM')"
                )
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    # -- prompts -----------------------------------------------------------------------
    def prompt_for(self, obj: str | VocabularyEntry) -> str:
        """The prompt for an object: its own prompt, else the template with the right article."""
        entry = _object_of(obj)
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

    # -- the protocol on whole frames -------------------------------------------------
    def _control_for(
        self, crop: torch.Tensor, soft: torch.Tensor, label: np.ndarray | None, window: CropWindow
    ) -> torch.Tensor:
        if self.control == "segmentation":
            if label is None:
                raise ValueError("control='segmentation' needs the frames' label maps")
            crop_lbl = label[window.crop.slices]
            colour = torch.from_numpy(colorize_train_ids(crop_lbl)).permute(2, 0, 1)[None].float() / 255.0
            return F.interpolate(colour, size=crop.shape[-2:], mode="nearest")[0]
        # ControlNet-inpaint convention: masked pixels set to -1.
        ctrl = crop.clone()
        ctrl[:, soft[0] > 0.5] = -1.0
        return ctrl

    def synthesize(
        self, frame: np.ndarray, box: Box, obj: str | VocabularyEntry, seed: int, label: np.ndarray | None = None
    ) -> InpaintResult:
        """Inpaint one object into one frame (see :meth:`synthesize_batch`)."""
        return self.synthesize_batch([frame], [box], [obj], [seed], None if label is None else [label])[0]

    def synthesize_batch(
        self,
        frames: Sequence[np.ndarray],
        boxes: Sequence[Box],
        objects: Sequence[str | VocabularyEntry],
        seeds: Sequence[int],
        labels: Sequence[np.ndarray | None] | None = None,
    ) -> list[InpaintResult]:
        """The paper's protocol on a batch of frames (H, W, 3 uint8), square boxes, objects and seeds.

        With ``refine`` the pasted frames go through the refinement pass and the refined frames are
        the results (whole frames: at strength 0.65 every pixel is re-rendered).
        """
        n = len(frames)
        if not (len(boxes) == len(objects) == len(seeds) == n):
            raise ValueError(
                f"frames, boxes, objects and seeds must have the same length, got {n}, "
                f"{len(boxes)}, {len(objects)}, {len(seeds)}"
            )
        labels = list(labels) if labels is not None else [None] * n
        entries = [_object_of(o) for o in objects]
        windows, crops, softs, prompts, gens, controls = [], [], [], [], [], []
        for frame, box, entry, seed, label in zip(frames, boxes, entries, seeds, labels):
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be uint8 (H, W, 3) RGB arrays, got {frame.dtype} {frame.shape}")
            win = context_window(box, frame.shape[:2], self.context_scale)
            crop = crop_to_tensor(frame, win, self.resolution)
            soft = soft_box_mask(win, self.resolution, self.blur_kernel)
            windows.append(win)
            crops.append(crop)
            softs.append(soft)
            prompts.append(self.prompt_for(entry))
            gens.append(torch_generator(int(seed), "inpaint"))
            if self.controlnet_id:
                controls.append(self._control_for(crop, soft, label, win))
        out = self.inpaint(
            torch.stack(crops),
            torch.stack(softs),
            prompts,
            gens,
            control_images=torch.stack(controls) if controls else None,
        )
        new_frames: list[np.ndarray | None] = []
        patches: list[np.ndarray | None] = []
        for i, frame in enumerate(frames):
            if out.valid[i]:
                nf, patch = paste_square(np.asarray(frame), out.images[i], windows[i])
                new_frames.append(nf)
                patches.append(patch)
            else:
                new_frames.append(None)
                patches.append(None)
        pasted = list(new_frames)
        if self.refine:
            self._refine(new_frames, patches, windows, entries, seeds, labels)
        results = []
        for i, frame in enumerate(frames):
            results.append(
                self._finish(
                    np.asarray(frame),
                    new_frames[i],
                    pasted[i],
                    patches[i],
                    windows[i],
                    entries[i],
                    prompts[i],
                    int(seeds[i]),
                )
            )
        return results

    def _refine(
        self,
        new_frames: list,
        patches: list,
        windows: list[CropWindow],
        entries: list[VocabularyEntry],
        seeds: Sequence[int],
        labels: list,
    ) -> None:
        """The refinement pass of Loiseau et al.: the same pipeline over the pasted frame, mask = the hard square,
        prompt = the bare object name, ``refine_strength`` (0.65), ``refine_guidance_scale`` (diffusers' 7.5).

        ``refine_region="frame"`` (the authors'): the full frame at full resolution (snapped to a multiple
        of 8; ``refine_max_side`` caps it) and the whole output frame is kept. ``"crop"``: the context
        crop at ``resolution``, only the square pasted back.
        """
        todo = [i for i, f in enumerate(new_frames) if f is not None]
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            key = new_frames[i].shape[:2] if self.refine_region == "frame" else (self.resolution, self.resolution)
            groups.setdefault(tuple(key), []).append(i)
        for _, idx in sorted(groups.items()):
            imgs, masks, ctrls = [], [], []
            for i in idx:
                frame, win = new_frames[i], windows[i]
                if self.refine_region == "frame":
                    h, w = frame.shape[:2]
                    th, tw = snap_size(h, w, self.refine_max_side or max(h, w))
                    t = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
                    if (th, tw) != (h, w):
                        t = F.interpolate(t, size=(th, tw), mode="bicubic", align_corners=False, antialias=True)
                    t = t[0].clamp(0, 1)
                    hard = torch.zeros(1, 1, h, w)
                    hard[0, 0][win.box.slices] = 1.0
                    mask = F.interpolate(hard, size=(th, tw), mode="nearest")[0]
                else:
                    t = crop_to_tensor(frame, win, self.resolution)
                    mask = soft_box_mask(win, self.resolution, 1)
                imgs.append(t)
                masks.append(mask)
                if self.controlnet_id:
                    if self.refine_region == "frame":
                        ctrls.append(self._control_full(t, mask, labels[i]))
                    else:
                        ctrls.append(self._control_for(t, mask, labels[i], win))
            res = self.inpaint(
                torch.stack(imgs),
                torch.stack(masks),
                [entries[i].name for i in idx],
                [torch_generator(int(seeds[i]), "refine") for i in idx],
                strength=self.refine_strength,
                control_images=torch.stack(ctrls) if ctrls else None,
                guidance_scale=self.refine_guidance_scale,
            )
            for j, i in enumerate(idx):
                if not res.valid[j]:
                    self.stats["refine_failed"] += 1
                    continue
                win, frame = windows[i], new_frames[i]
                if self.refine_region == "frame":
                    h, w = frame.shape[:2]
                    out = res.images[j][None]
                    if out.shape[-2:] != (h, w):
                        out = F.interpolate(out, size=(h, w), mode="bicubic", align_corners=False)
                    frame = to_uint8(out[0])
                    patch = frame[win.box.slices].copy()
                else:
                    frame, patch = paste_square(frame, res.images[j], win)
                new_frames[i], patches[i] = frame, patch
                self.stats["refined"] += 1

    def _control_full(self, image: torch.Tensor, mask: torch.Tensor, label: np.ndarray | None) -> torch.Tensor:
        if self.control == "segmentation":
            if label is None:
                raise ValueError("control='segmentation' needs the frames' label maps")
            colour = torch.from_numpy(colorize_train_ids(label)).permute(2, 0, 1)[None].float() / 255.0
            return F.interpolate(colour, size=image.shape[-2:], mode="nearest")[0]
        ctrl = image.clone()
        ctrl[:, mask[0] > 0.5] = -1.0
        return ctrl

    def _finish(
        self,
        frame: np.ndarray,
        new_frame: np.ndarray | None,
        pasted: np.ndarray | None,
        patch: np.ndarray | None,
        win: CropWindow,
        entry: VocabularyEntry,
        prompt: str,
        seed: int,
    ) -> InpaintResult:
        box = win.box
        empty = np.zeros((box.side, box.side), dtype=bool)
        common: dict[str, Any] = dict(
            box=box,
            object_name=entry.name,
            label_value=int(entry.label_value),
            prompt=prompt,
            seed=seed,
            model_id=self.model_id,
        )
        if new_frame is None or patch is None:
            return InpaintResult(
                frame.copy(),
                patch=frame[box.slices].copy(),
                object_mask=empty,
                alpha=empty.astype(np.float32),
                ok=False,
                reason="inpainting produced no usable image",
                **common,
            )
        sl = win.crop.slices
        # Maskers that compare with the original see the frame before refinement (which re-renders every pixel).
        seen = pasted if (self.masker.compares_to_original and pasted is not None) else new_frame
        mres = self.masker.mask(seen[sl], frame[sl], win.box_in_crop, entry.name)
        obj = mres.mask[win.box_in_crop.slices]
        alpha = feather(obj, self.feather_sigma * box.side) * obj.any()
        if not mres.accepted:
            self.stats["mask_rejected"] += 1
        return InpaintResult(
            new_frame,
            patch=patch,
            object_mask=obj,
            alpha=alpha.astype(np.float32),
            ok=mres.accepted,
            reason=mres.reason,
            **common,
        )
