"""Any folder of images (no labels), for prediction: JPEG, PNG and WebP files found recursively."""

from __future__ import annotations

from collections.abc import Sequence

from synthrel_lightning.data.base import Frame, OnError, SegmentationDataset, Transform, void_like
from synthrel_lightning.data.io import DatasetError, PathLike, read_image
from synthrel_lightning.data.sample import Sample

__all__ = ["FolderDataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")
"""File endings (any case) read as images."""


class FolderDataset(SegmentationDataset):
    """Every image under ``root`` (recursively, sorted by path), unlabelled: ``label``/``ood`` all void (255).

    A frame's ``name`` is its path relative to ``root`` without the extension, with ``/``
    separators (``street/0001`` for ``root/street/0001.jpg``), so predictions written under
    those names mirror the folder. Hidden files and folders (starting with ``.``) are ignored;
    two images that differ only by extension are an error (their names would collide).
    Greyscale images are read as RGB with three equal channels.
    """

    has_semantics = False
    has_ood = False

    def __init__(
        self,
        root: PathLike,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        max_samples: int | None = None,
    ) -> None:
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        if not exts:
            raise ValueError("FolderDataset: extensions must name at least one file ending, e.g. ['.jpg']")
        self.extensions = exts
        super().__init__(root, transform=transform, on_error=on_error, max_samples=max_samples)

    def _index(self) -> list[Frame]:
        found = sorted(
            p
            for p in self.root.rglob("*")
            if p.suffix.lower() in self.extensions
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        if not found:
            raise DatasetError(
                f"{type(self).__name__}: no images ({', '.join(self.extensions)}) found under {self.root}; "
                "pass a folder that holds image files (searched recursively)"
            )
        frames: dict[str, Frame] = {}
        for path in found:
            name = path.relative_to(self.root).with_suffix("").as_posix()
            if name in frames:
                raise DatasetError(
                    f"{type(self).__name__}: {frames[name].image} and {path} would both be named {name!r}; "
                    "rename one (names are paths relative to the folder, without extension)"
                )
            frames[name] = Frame(name, path)
        return list(frames.values())

    def _load(self, frame: Frame) -> Sample:
        image = read_image(frame.image, allow_grayscale=True)  # a greyscale photo is predicted as grey RGB
        return {"image": image, "label": void_like(image), "ood": void_like(image), "name": frame.name}
