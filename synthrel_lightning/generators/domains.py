"""Domain-shifted street scenes from Cityscapes label maps with a ControlNet on Stable Diffusion 1.5.

A ControlNet conditioned on the encoded label map renders the scene in another domain
("<caption>, in fog, "); the conditioning label map is the ground truth. The defaults follow
GenVal (Loiseau et al., "Reliability in Semantic Segmentation: Can We Use Synthetic Data?",
ECCV 2024; github.com/valeoai/GenVal): DDIM 25 steps, eta 0, guidance 8, control strength 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthrel_lightning.devices import resolve_device
from synthrel_lightning.generators.captions import GENERIC_CAPTION
from synthrel_lightning.generators.encodings import (
    EncodingError,
    IdKind,
    LabelEncoding,
    get_encoding,
    resolve_encoding,
    train_ids_to_label_ids,
)
from synthrel_lightning.paths import check_name
from synthrel_lightning.seeding import torch_generator
from synthrel_lightning.synthesis.pipeline_loading import DTYPES, ModelLoadError
from synthrel_lightning.synthesis.protocol import to_uint8

__all__ = [
    "GENVAL_PROMPT_TEMPLATE",
    "DomainShiftGenerator",
    "DomainSample",
    "check_domain_name",
    "train_ids_to_label_ids",
]

log = logging.getLogger(__name__)

GENVAL_PROMPT_TEMPLATE = "{caption}, in {domain}, "
"""GenVal's prompt (``ControlNet/style_transfer.py``): ``data["txt"] + f", in {domain}"``, to which
``process`` appends ``", " + a_prompt`` with ``a_prompt = ""``; the negative prompt is empty."""


def check_domain_name(domain: str) -> str:
    """``domain`` if it can name an output folder (see :func:`~synthrel_lightning.paths.check_name`)."""
    return check_name(domain, what="domain")


@dataclass
class DomainSample:
    """A generated frame in ``domain``, its ground truth (the conditioning label map, as given) and provenance."""

    image: np.ndarray
    label: np.ndarray
    domain: str
    prompt: str
    seed: int


class DomainShiftGenerator:
    """Text-to-image with label-map control: label map + caption + domain -> a frame of the label map's size.

    ``controlnet_id`` is a hub id or a ``save_pretrained`` folder; a folder written by
    :class:`~synthrel_lightning.generators.controlnet_module.ControlNetFineTuning` carries its
    encoding (``synthrel_encoding.json``). Without that file, ``encoding`` must name it
    (``ade20k_palette`` for lllyasviel/sd-controlnet-seg). ``caption`` is a fixed caption
    (a plain string, whatever it contains) used when a frame brings none. Frames whose size
    is not a multiple of 8 are rendered at the next multiple and resized back.
    """

    def __init__(
        self,
        base_model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet_id: str = "lllyasviel/sd-controlnet-seg",
        encoding: str | None = None,
        domains: Sequence[str] = ("fog", "night", "rain", "snow"),
        prompt_template: str = GENVAL_PROMPT_TEMPLATE,
        caption: str | None = None,
        num_inference_steps: int = 25,
        eta: float = 0.0,
        guidance_scale: float = 8.0,
        conditioning_scale: float = 1.0,
        unet_lora: str | None = None,
        device: str = "auto",
        dtype: str = "float16",
        batch_size: int = 4,
        pipeline: Any = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"DomainShiftGenerator dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if not domains or isinstance(domains, str):
            raise ValueError(f"DomainShiftGenerator needs a list of domains (e.g. ['fog', 'night']), got {domains!r}")
        if "{domain}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{domain}}', got {prompt_template!r}")
        self.base_model_id = base_model_id
        self.controlnet_id = controlnet_id
        self.requested_encoding = None if encoding is None else get_encoding(encoding).name
        self.domains = tuple(check_domain_name(d) for d in domains)
        self.prompt_template = prompt_template
        self.caption = caption
        self.num_inference_steps = int(num_inference_steps)
        self.eta = float(eta)
        self.guidance_scale = float(guidance_scale)
        self.conditioning_scale = float(conditioning_scale)
        self.unet_lora = unet_lora
        self.device = resolve_device(device, who="DomainShiftGenerator")
        self.dtype = DTYPES[dtype]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            self.dtype = torch.float32
        self.batch_size = int(batch_size)
        self._pipeline = pipeline
        self._prebuilt = pipeline is not None
        self._encoding: LabelEncoding | None = None

    @property
    def loaded(self) -> bool:
        """Whether the pipeline is built (loading happens on first access to :attr:`pipeline`)."""
        return self._pipeline is not None

    def to(self, device: str | torch.device) -> DomainShiftGenerator:
        """Run on ``device`` from now on (moves the pipeline when it is already loaded)."""
        self.device = resolve_device(device, who="DomainShiftGenerator")
        if self._pipeline is not None:
            self._pipeline.to(self.device)
        return self

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
                    f"could not load base model {self.base_model_id!r} / ControlNet {self.controlnet_id!r}: "
                    f"expected hub ids or local folders saved with save_pretrained ({e})"
                ) from e
            if self.unet_lora is not None:
                pipe.load_lora_weights(self.unet_lora)
            pipe.to(self.device)
            self._pipeline = pipe
        pipe = self._pipeline
        import diffusers

        if not isinstance(pipe.scheduler, diffusers.DDIMScheduler):
            pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @property
    def encoding(self) -> LabelEncoding:
        """The conditioning encoding, checked against the ControlNet's ``conditioning_channels``."""
        if self._encoding is None:
            channels = int(self.pipeline.controlnet.config.conditioning_channels)
            source = None if self._prebuilt else self.controlnet_id
            self._encoding = resolve_encoding(source, channels, self.requested_encoding)
        return self._encoding

    def prompt(self, domain: str, caption: str | None = None) -> str:
        """The generation prompt for a domain and a caption (default: the fixed caption, else a generic one)."""
        caption = caption if caption is not None else (self.caption if self.caption is not None else GENERIC_CAPTION)
        return self.prompt_template.replace("{caption}", caption).replace("{domain}", domain)

    def generate(
        self,
        labels: Sequence[np.ndarray],
        domains: Sequence[str],
        seeds: Sequence[int],
        captions: Sequence[str | None] | None = None,
        ids: IdKind = "train_ids",
    ) -> list[DomainSample]:
        """One frame per (label map, domain, seed[, caption]); ``ids`` says whether maps hold train or label ids."""
        if not (len(labels) == len(domains) == len(seeds)):
            raise ValueError("labels, domains and seeds must have the same length")
        captions = list(captions) if captions is not None else [None] * len(labels)
        if len(captions) != len(labels):
            raise ValueError("captions must have one entry per label map")
        out: list[DomainSample] = []
        for start in range(0, len(labels), self.batch_size):
            sl = slice(start, start + self.batch_size)
            out.extend(self._generate(list(labels[sl]), list(domains[sl]), list(seeds[sl]), captions[sl], ids))
        return out

    def _generate(
        self, labels: list[np.ndarray], domains: list[str], seeds: list[int], captions: list, ids: IdKind
    ) -> list[DomainSample]:
        shapes = {np.shape(lbl) for lbl in labels}
        if len(shapes) != 1:
            return [
                s
                for i in range(len(labels))
                for s in self._generate(
                    labels[i : i + 1], domains[i : i + 1], seeds[i : i + 1], captions[i : i + 1], ids
                )
            ]
        for lbl in labels:
            if np.ndim(lbl) != 2:
                raise EncodingError(f"label maps must be (H, W) Cityscapes {ids}, got shape {np.shape(lbl)}")
        h, w = labels[0].shape
        th, tw = -(-h // 8) * 8, -(-w // 8) * 8
        encoding = self.encoding
        conds = []
        for i, lbl in enumerate(labels):
            cond = encoding.encode_tensor(lbl, ids=ids, what=f"label map {i} of the batch")[None]
            if (th, tw) != (h, w):
                cond = F.interpolate(cond, size=(th, tw), mode="nearest")
            conds.append(cond[0])
        prompts = [self.prompt(d, c) for d, c in zip(domains, captions)]
        gens = [torch_generator(int(s), "domain", d) for s, d in zip(seeds, domains)]
        with torch.inference_mode():
            res = (
                self.pipeline(
                    prompt=prompts,
                    image=torch.stack(conds),
                    height=th,
                    width=tw,
                    num_inference_steps=self.num_inference_steps,
                    eta=self.eta,
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
