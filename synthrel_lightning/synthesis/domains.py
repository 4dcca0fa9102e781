"""Domain-shifted street scenes from Cityscapes label maps with a ControlNet (REFERENCE.md §1c).

A ControlNet on SD 1.5 conditioned on the colour-coded label map generates a scene in
another domain ("<caption>, in fog"); the conditioning label map is the ground truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthrel_lightning.labels import CITYSCAPES_CLASSES, VOID_ID, colorize_train_ids
from synthrel_lightning.seeding import torch_generator
from synthrel_lightning.synthesis.engine import _DTYPES, ModelLoadError
from synthrel_lightning.synthesis.protocol import snap_size, to_uint8

__all__ = ["DomainShiftGenerator", "DomainSample", "TRAIN_TO_LABEL_ID", "train_ids_to_label_ids", "check_domain_name"]

log = logging.getLogger(__name__)


def _train_to_label_lut() -> np.ndarray:
    # 0 ("unlabeled") for void; values without a Cityscapes meaning (e.g. OOD 254) stay
    # 255 so that train_ids_to_label_ids can refuse them.
    lut = np.full(256, 255, dtype=np.uint8)
    lut[VOID_ID] = 0
    for c in CITYSCAPES_CLASSES:
        if c.label_id >= 0 and c.train_id != VOID_ID:
            lut[c.train_id] = c.label_id
    return lut


TRAIN_TO_LABEL_ID: np.ndarray = _train_to_label_lut()
"""Lookup table (256,): train id 0..18 -> its Cityscapes label id, void 255 -> 0 ("unlabeled"); others -> 255 (invalid)."""


def train_ids_to_label_ids(label: np.ndarray, what: str = "label map") -> np.ndarray:
    """Map train ids (0..18, void 255) back to Cityscapes label ids, the inverse of ``labels.LABEL_TO_TRAIN_ID`` on train ids.

    Raises ValueError naming ``what`` when the map holds another value (e.g. OOD 254), which has no label id.
    """
    label = np.asarray(label)
    if label.dtype != np.uint8:
        if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
            raise ValueError(
                f"{what}: train ids must lie in 0..255, got values in {int(label.min())}..{int(label.max())}"
            )
        label = label.astype(np.uint8)
    out = TRAIN_TO_LABEL_ID[label]
    bad = (out == 255) & (label != VOID_ID)
    if bad.any():
        stray = sorted(int(v) for v in np.unique(label[bad]))
        raise ValueError(
            f"{what} holds values {stray} that are not Cityscapes train ids (0..18, void 255); "
            "a domain-shift ground truth can only hold Cityscapes classes"
        )
    return out


def check_domain_name(domain: str) -> str:
    """``domain`` if it can name an output folder (non-empty, no path separator, not '.'/'..'), else ValueError."""
    d = str(domain)
    if not d.strip() or "/" in d or "\\" in d or d in (".", ".."):
        raise ValueError(f"domain names become folder names; {domain!r} is not usable (expected e.g. 'fog', 'night')")
    return d


@dataclass
class DomainSample:
    """A generated frame in ``domain``, its ground truth (the conditioning label map) and provenance."""

    image: np.ndarray
    label: np.ndarray
    domain: str
    prompt: str
    seed: int


class DomainShiftGenerator:
    """Text-to-image with label-map control: Cityscapes label map + domain -> a frame of the same size."""

    def __init__(
        self,
        base_model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet_id: str = "lllyasviel/sd-controlnet-seg",
        domains: Sequence[str] = ("fog", "night", "rain", "snow"),
        prompt_template: str = "{caption}, in {domain}",
        caption: str | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 8.0,
        conditioning_scale: float = 1.0,
        max_side: int = 1024,
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 4,
        pipeline: Any = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"DomainShiftGenerator dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if not domains or isinstance(domains, str):
            raise ValueError(f"DomainShiftGenerator needs a list of domains (e.g. ['fog', 'night']), got {domains!r}")
        if "{domain}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{domain}}', got {prompt_template!r}")
        self.base_model_id = base_model_id
        self.controlnet_id = controlnet_id
        self.domains = tuple(domains)
        self.prompt_template = prompt_template
        # A fixed caption, or a Hugging Face image-captioning model id used on the source frame.
        self.caption = caption
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.conditioning_scale = float(conditioning_scale)
        self.max_side = int(max_side)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.dtype = _DTYPES[dtype]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            self.dtype = torch.float32
        self.batch_size = int(batch_size)
        self._pipeline = pipeline
        self._captioner: Any = None

    @property
    def pipeline(self) -> Any:
        """The StableDiffusionControlNetPipeline (DDIM scheduler), loaded on first access."""
        if self._pipeline is None:
            import diffusers

            try:
                controlnet = diffusers.ControlNetModel.from_pretrained(self.controlnet_id, dtype=self.dtype)
                pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
                    self.base_model_id,
                    controlnet=controlnet,
                    dtype=self.dtype,
                    safety_checker=None,
                    requires_safety_checker=False,
                )
            except (OSError, ValueError) as e:
                raise ModelLoadError(
                    f"could not load base model {self.base_model_id!r} / ControlNet {self.controlnet_id!r}: expected hub ids "
                    f"or local folders saved with save_pretrained ({e})"
                ) from e
            pipe.to(self.device)
            self._pipeline = pipe
        pipe = self._pipeline
        import diffusers

        if not isinstance(pipe.scheduler, diffusers.DDIMScheduler):
            pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def caption_for(self, image: np.ndarray | None) -> str:
        """The scene caption: the fixed one, a captioner's output on ``image``, or a generic street description."""
        default = "a photo of a city street with cars, buildings and trees"
        if self.caption is None:
            return default
        if "/" not in self.caption:
            return self.caption
        if image is None:
            return default
        if self._captioner is None:
            # transformers 5 has no "image-to-text" pipeline; captioners (BLIP, GIT, ...) load as image-text-to-text models.
            from transformers import AutoModelForImageTextToText, AutoProcessor

            try:
                processor = AutoProcessor.from_pretrained(self.caption)
                model = AutoModelForImageTextToText.from_pretrained(self.caption).to(self.device).eval()
            except (OSError, ValueError) as e:
                raise ModelLoadError(
                    f"could not load image captioner {self.caption!r}: expected a hub id or local folder of a captioning model such as BLIP ({e})"
                ) from e
            self._captioner = (processor, model)
        processor, model = self._captioner
        from PIL import Image

        inputs = processor(images=Image.fromarray(image), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=30)
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        return str(text).strip() or default

    def prompt(self, domain: str, caption: str) -> str:
        """The generation prompt for a domain."""
        return self.prompt_template.replace("{caption}", caption).replace("{domain}", domain)

    def generate(
        self,
        labels: Sequence[np.ndarray],
        domains: Sequence[str],
        seeds: Sequence[int],
        images: Sequence[np.ndarray | None] | None = None,
    ) -> list[DomainSample]:
        """Generate one frame per (label map, domain, seed); images (if given) are only used for captions."""
        if not (len(labels) == len(domains) == len(seeds)):
            raise ValueError("labels, domains and seeds must have the same length")
        images = list(images) if images is not None else [None] * len(labels)
        out: list[DomainSample] = []
        for start in range(0, len(labels), self.batch_size):
            sl = slice(start, start + self.batch_size)
            out.extend(self._generate(list(labels[sl]), list(domains[sl]), list(seeds[sl]), images[sl]))
        return out

    def _generate(
        self, labels: list[np.ndarray], domains: list[str], seeds: list[int], images: list
    ) -> list[DomainSample]:
        shapes = {lbl.shape for lbl in labels}
        if len(shapes) != 1:
            return [
                s
                for i in range(len(labels))
                for s in self._generate(labels[i : i + 1], domains[i : i + 1], seeds[i : i + 1], images[i : i + 1])
            ]
        h, w = labels[0].shape
        th, tw = snap_size(h, w, self.max_side)
        conds = []
        for lbl in labels:
            if lbl.ndim != 2:
                raise ValueError(f"label maps must be (H, W) train ids, got shape {lbl.shape}")
            colour = torch.from_numpy(colorize_train_ids(lbl)).permute(2, 0, 1)[None].float() / 255.0
            conds.append(F.interpolate(colour, size=(th, tw), mode="nearest")[0])
        prompts = [self.prompt(d, self.caption_for(img)) for d, img in zip(domains, images)]
        gens = [torch_generator(int(s), "domain", d) for s, d in zip(seeds, domains)]
        with torch.inference_mode():
            res = (
                self.pipeline(
                    prompt=prompts,
                    image=torch.stack(conds),
                    height=th,
                    width=tw,
                    num_inference_steps=self.num_inference_steps,
                    guidance_scale=self.guidance_scale,
                    controlnet_conditioning_scale=self.conditioning_scale,
                    generator=gens,
                    output_type="pt",
                )
                .images.float()
                .cpu()
            )
        if (th, tw) != (h, w):
            res = F.interpolate(res, size=(h, w), mode="bicubic", align_corners=False)
        return [
            DomainSample(
                to_uint8(res[i]), np.asarray(labels[i], dtype=np.uint8).copy(), domains[i], prompts[i], int(seeds[i])
            )
            for i in range(len(labels))
        ]
