"""Per-frame captions: the JSONL caption file, and captioning a Cityscapes-layout split with a transformers model.

The caption file has one JSON object per line, ``{"image", "conditioning_image", "text"}``,
the format GenVal ships for Cityscapes (github.com/valeoai/GenVal, ``ControlNet/training/
train.jsonl`` and ``val.jsonl``); those files are read as they are. Frames are matched by
file name (``<city>_<seq>_<frame>``), so the paths in the file may point anywhere.

Captioning (:func:`caption_split`) is a Lightning predict loop: frames still missing from the
file are sharded over ranks, :class:`Captioner` captions a batch with any transformers
captioner (BLIP, BLIP-2, Florence-2, ...), and :class:`CaptionWriter` appends the batch's lines
with one ``O_APPEND`` write, so an interrupted run keeps every finished batch and resumes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import Dataset

from synthrel_lightning.predict_loop import (
    BatchPredictionWriter,
    HostItemsDataModule,
    lost_peers_message,
    peers_lost_as,
    predict_trainer,
)

__all__ = [
    "GENERIC_CAPTION",
    "CaptionError",
    "CaptionFile",
    "CaptionItems",
    "CaptionDataModule",
    "Captioner",
    "CaptionWriter",
    "MissingCaptions",
    "append_jsonl",
    "caption_split",
    "frame_key",
]

log = logging.getLogger(__name__)

GENERIC_CAPTION = "a photo of a city street with cars, buildings and trees"
"""The caption used when none is given (and, opt-in, for frames missing from a caption file)."""

MissingCaptions = Literal["error", "generic"]
_SUFFIXES = ("_leftImg8bit", "_gtFine_labelIds", "_gtFine_labelTrainIds", "_gtFine_color")


class CaptionError(ValueError):
    """A caption file that cannot be read, or that lacks frames."""


def frame_key(path_or_name: str | os.PathLike[str]) -> str:
    """The frame name a caption is matched by: the file name without extension and Cityscapes suffix."""
    stem = Path(str(path_or_name)).name
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def append_jsonl(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Append ``records`` as JSON lines with a single ``O_APPEND`` write (never interleaved with other appends)."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # the kernel applies the umask
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class CaptionFile:
    """Captions by frame name, read from a JSONL caption file."""

    path: Path
    captions: dict[str, str]

    @classmethod
    def read(cls, path: str | os.PathLike[str], repair: bool = False) -> CaptionFile:
        """Read ``path``; a truncated last line (an interrupted append) is ignored, or cut off with ``repair``.

        Raises :class:`CaptionError` naming the file and line for any other malformed line.
        """
        path = Path(path)
        if not path.is_file():
            raise CaptionError(f"caption file {path} does not exist (expected JSONL lines {{image, text}})")
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail.strip():
            log.warning("caption file %s ends with an incomplete line (an interrupted write); ignoring it", path)
            if repair:
                with open(path, "r+b") as fh:
                    fh.truncate(len(raw) - len(tail))
        captions: dict[str, str] = {}
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = frame_key(record["image"])
                text = record["text"]
            except (ValueError, KeyError, TypeError) as e:
                raise CaptionError(
                    f"{path}:{number} is not a caption record (expected a JSON object with 'image' and 'text'): {e}"
                ) from e
            if not isinstance(text, str):
                raise CaptionError(f"{path}:{number}: 'text' must be a string, got {type(text).__name__}")
            captions[key] = text
        return cls(path, captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and frame_key(name) in self.captions

    def lookup(
        self, names: Iterable[str], on_missing: MissingCaptions = "error", generic: str = GENERIC_CAPTION
    ) -> tuple[dict[str, str], list[str]]:
        """(caption by name, names given ``generic``); missing frames raise unless ``on_missing="generic"``."""
        names = list(names)
        missing = [n for n in names if frame_key(n) not in self.captions]
        if missing and on_missing != "generic":
            first = ", ".join(missing[:5])
            raise CaptionError(
                f"caption file {self.path} has no caption for {len(missing)} of {len(names)} frames "
                f"(first: {first}); caption them (python -m synthrel_lightning caption) or opt in to a generic "
                "caption for them (on_missing_caption: generic)"
            )
        if missing:
            log.warning("%d frames have no caption in %s: using %r", len(missing), self.path, generic)
        return {n: self.captions.get(frame_key(n), generic) for n in names}, missing


# ----------------------------------------------------------------------------- captioning loop


class CaptionItems(Dataset):
    """The frames of a Cityscapes-layout split that the caption file does not hold yet."""

    def __init__(self, source: Any, done: Iterable[str] = (), max_frames: int | None = None) -> None:
        frames = getattr(source, "frames", None)
        if frames is None:
            raise TypeError(f"caption needs a file-backed dataset listing its frames, got {type(source).__name__}")
        frames = list(frames) if max_frames is None else list(frames)[: int(max_frames)]
        done = set(done)
        self.root = Path(getattr(source, "root", "."))
        self.items = [f for f in frames if frame_key(f.name) not in done]
        self.total = len(frames)

    def __len__(self) -> int:
        return len(self.items)

    def _relative(self, path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def __getitem__(self, k: int) -> dict[str, Any]:
        from synthrel_lightning.data.io import read_image

        frame = self.items[k]
        return {
            "name": frame.name,
            "image": read_image(frame.image),
            "image_path": self._relative(frame.image),
            "conditioning_path": self._relative(frame.label),
        }


class CaptionDataModule(HostItemsDataModule):
    """The frames of ``root``/``split`` still missing from ``out`` (listed in ``setup`` on every rank)."""

    def __init__(
        self, root: str, split: str, out: str, max_frames: int | None = None, batch_size: int = 8, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.root, self.split, self.out, self.max_frames = root, split, out, max_frames
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.items: CaptionItems | None = None

    def prepare_data(self) -> None:
        """Cut off a line left incomplete by an interrupted run (once, before any rank appends)."""
        if Path(self.out).is_file():
            CaptionFile.read(self.out, repair=True)

    def setup(self, stage: str) -> None:
        """List the frames to caption."""
        from synthrel_lightning.data.cityscapes import CityscapesDataset

        done = CaptionFile.read(self.out).captions if Path(self.out).is_file() else {}
        source = CityscapesDataset(self.root, split=self.split)
        self.items = CaptionItems(source, done, self.max_frames)
        self.log_pending("caption", self.out)


class Captioner(L.LightningModule):
    """Captions images with a transformers image-text-to-text (or image-to-text) model.

    ``model`` is a hub id or a local folder (BLIP, BLIP-2, Florence-2, ...), or a pre-built
    ``(model, processor)`` pair. ``prompt`` is the text given with each image (e.g.
    ``"<MORE_DETAILED_CAPTION>"`` for Florence-2; None for BLIP); it is cut from the output
    when the model repeats it. Empty outputs become ``generic_caption`` (and are counted).
    """

    def __init__(
        self,
        model: str | tuple[Any, Any] = "Salesforce/blip-image-captioning-large",
        prompt: str | None = None,
        max_new_tokens: int = 40,
        num_beams: int = 1,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        generic_caption: str = GENERIC_CAPTION,
    ) -> None:
        super().__init__()
        self.model_source = model
        self.prompt, self.max_new_tokens, self.num_beams = prompt, int(max_new_tokens), int(num_beams)
        self.torch_dtype = getattr(torch, dtype)
        self.generic_caption = generic_caption
        self.captioner: Any = None
        self.processor: Any = None
        self.empty = 0
        if not isinstance(model, str):
            self.captioner, self.processor = model

    def configure_model(self) -> None:
        """Load the captioner (before Lightning moves the module to its device)."""
        if self.captioner is not None:
            return
        from transformers import AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(self.model_source)
            self.captioner = _load_captioning_model(str(self.model_source), self.torch_dtype)
        except (OSError, ValueError) as e:
            raise CaptionError(
                f"could not load captioner {self.model_source!r}: expected a hub id or a local folder of a "
                f"transformers image-captioning model (BLIP, BLIP-2, Florence-2) saved with save_pretrained ({e})"
            ) from e
        self.captioner.eval().requires_grad_(False)

    def caption(self, images: Sequence[Any]) -> list[str]:
        """One caption per image (uint8 (H, W, 3) arrays or PIL images)."""
        from PIL import Image

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images]
        kwargs: dict[str, Any] = {"images": pil, "return_tensors": "pt"}
        if self.prompt is not None:
            kwargs["text"] = [self.prompt] * len(pil)
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.captioner.dtype)
        with torch.inference_mode():
            ids = self.captioner.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        texts = []
        for text in self.processor.batch_decode(ids, skip_special_tokens=True):
            text = str(text).strip()
            if self.prompt and text.startswith(self.prompt):
                text = text[len(self.prompt) :].strip()
            if not text:
                self.empty += 1
                text = self.generic_caption
            texts.append(text)
        return texts

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        """Caption a batch of frames; returns their caption records."""
        texts = self.caption([it["image"] for it in batch])
        return [
            {"image": it["image_path"], "conditioning_image": it["conditioning_path"], "text": t}
            for it, t in zip(batch, texts)
        ]


def _load_captioning_model(source: str, dtype: torch.dtype) -> Any:
    import transformers

    errors = []
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            return auto.from_pretrained(source, dtype=dtype)
        except ValueError as e:  # not registered for this auto class: try the next
            errors.append(f"{name}: {e}")
    raise ValueError("; ".join(errors) or "no auto class fits")


class CaptionWriter(BatchPredictionWriter):
    """Appends each batch's caption records to the JSONL file (one atomic append per batch)."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.written = 0

    def write_batch(self, prediction: Any, batch_idx: int) -> None:
        """Append the batch's records."""
        append_jsonl(self.out, prediction)
        self.written += len(prediction)


def caption_split(
    root: str,
    out: str,
    split: str = "train",
    captioner: Captioner | None = None,
    max_frames: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    limit_predict_batches: int | float | None = None,
    progress: bool = True,
    process_group_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Caption every frame of the Cityscapes-layout ``root``/``split`` into the JSONL ``out``, skipping done frames.

    ``process_group_timeout_s``: on several processes, how long one waits for the others before it
    fails with :class:`~synthrel_lightning.predict_loop.ProcessGroupLost`, naming what it wrote.
    """
    if Path(out).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"caption: out {out!r} lies inside the dataset folder {root!r}; write captions elsewhere")
    captioner = captioner if captioner is not None else Captioner()
    datamodule = CaptionDataModule(root, split, out, max_frames, batch_size, num_workers)
    writer = CaptionWriter(out)
    trainer = predict_trainer(
        accelerator, devices, strategy, num_nodes, [writer], progress, limit_predict_batches, process_group_timeout_s
    )
    with peers_lost_as(
        lost_peers_message("caption", trainer, lambda: {"written": writer.written}, process_group_timeout_s)
    ):
        trainer.predict(captioner, datamodule=datamodule, return_predictions=False)
    assert datamodule.items is not None
    return {
        "written": writer.written,
        "empty_captions": captioner.empty,
        "pending_at_start": len(datamodule.items),
        "total": datamodule.items.total,
        "out": str(out),
    }
