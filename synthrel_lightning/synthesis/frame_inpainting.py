"""The paper's protocol on whole frames, the part of :class:`~synthrel_lightning.synthesis.engine.InpaintingEngine`
that turns frames, boxes and objects into :class:`~synthrel_lightning.synthesis.inpaint_result.InpaintResult`.

Loiseau et al. (ECCV 2024, arXiv 2312.09231; github.com/valeoai/GenVal): context crop, box-blurred box
mask, inpainting, paste-back of the central square, the refinement pass over the full frame (mask = the
hard square, prompt = the bare object name, strength 0.65), object mask. :class:`FrameInpainting` is mixed
into the engine, which supplies the batched :meth:`inpaint`, the prompts and the settings declared below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthrel_lightning.labels import colorize_train_ids
from synthrel_lightning.seeding import torch_generator
from synthrel_lightning.synthesis.geometry import Box
from synthrel_lightning.synthesis.inpaint_result import InpaintOutput, InpaintResult
from synthrel_lightning.synthesis.object_masks import ObjectMasker, feather
from synthrel_lightning.synthesis.protocol import (
    CropWindow,
    context_window,
    crop_to_tensor,
    paste_square,
    snap_size,
    soft_box_mask,
    to_uint8,
)
from synthrel_lightning.synthesis.vocabulary import VocabularyEntry, as_vocabulary_entry

__all__ = ["FrameInpainting"]


class FrameInpainting:
    """Inpaints objects into whole frames by the paper's protocol (a mixin of ``InpaintingEngine``)."""

    model_id: str
    controlnet_id: str | None
    control: str
    refine: bool
    refine_strength: float
    refine_guidance_scale: float
    refine_region: str
    refine_max_side: int | None
    resolution: int
    context_scale: float
    blur_kernel: int
    masker: ObjectMasker
    feather_sigma: float
    stats: dict[str, int]

    def prompt_for(self, obj: str | VocabularyEntry) -> str:
        """The prompt for an object (the engine's)."""
        raise NotImplementedError

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
        """Inpaint a batch of crops (the engine's)."""
        raise NotImplementedError

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
        entries = [as_vocabulary_entry(o) for o in objects]
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
