"""Object vocabularies for inpainting: the paper's 42 OOD objects, in-distribution controls, user lists.

Each entry carries the label value written into the ground truth: :data:`OOD_ID` for
out-of-distribution objects, the class's train id for in-distribution controls
(POC inpaints cars, persons, ... too, so that "was inpainted" is not a shortcut for
"is OOD").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrel_lightning.labels import NUM_CLASSES, OOD_ID, TRAIN_NAME_TO_ID

__all__ = [
    "VocabularyEntry",
    "PAPER_OBJECTS",
    "DEFAULT_CONTROL_CLASSES",
    "default_vocabulary",
    "control_vocabulary",
    "load_vocabulary",
    "resolve_vocabulary",
    "article",
    "as_vocabulary_entry",
]

PAPER_OBJECTS: tuple[str, ...] = (
    "table", "chair", "sofa", "mirror", "armchair", "desk", "lamp", "bathtub", "box", "refrigerator",
    "pillow", "toilet", "book", "bench", "computer", "arcade machine", "bottle", "bag", "microwave", "vase",
    "plate", "radiator", "clock", "baby", "billboard", "graffiti", "lion", "elephant", "giraffe", "tiger",
    "penguin", "dolphin", "kangaroo", "gorilla", "cheetah", "polar bear", "koala", "zebra", "hippopotamus",
    "chimpanzee", "flamingo", "panda",
)  # fmt: skip
"""The 42 OOD object names of Loiseau et al. (ECCV 2024, arXiv 2312.09231; github.com/valeoai/GenVal)."""

DEFAULT_CONTROL_CLASSES: tuple[str, ...] = ("car", "person", "bicycle", "motorcycle", "truck", "bus", "rider")
"""In-distribution classes inpainted as controls (labelled with their own train ids)."""


@dataclass(frozen=True)
class VocabularyEntry:
    """An object to inpaint: its name (used in the prompt), the label value it gets, and an optional prompt."""

    name: str
    label_value: int = OOD_ID
    prompt: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("a vocabulary entry needs a non-empty object name")
        if not (0 <= int(self.label_value) < NUM_CLASSES or int(self.label_value) == OOD_ID):
            raise ValueError(
                f"vocabulary entry {self.name!r}: label_value must be a train id 0..{NUM_CLASSES - 1} "
                f"or {OOD_ID} (OOD), got {self.label_value!r}"
            )

    @property
    def is_ood(self) -> bool:
        """True when the object is labelled OOD, False for in-distribution controls."""
        return int(self.label_value) == OOD_ID


def article(word: str) -> str:
    """ "an" before a vowel letter, else "a" (by the object's first letter, as the paper's prompt does)."""
    return "an" if word.strip()[:1].lower() in "aeiou" and word.strip() else "a"


def as_vocabulary_entry(obj: str | VocabularyEntry | dict) -> VocabularyEntry:
    """``obj`` as an entry: an entry as is, a dict with "name" (and "label_value", "prompt"), a bare name (OOD)."""
    if isinstance(obj, VocabularyEntry):
        return obj
    if isinstance(obj, dict):
        return VocabularyEntry(obj["name"], int(obj.get("label_value", OOD_ID)), obj.get("prompt"))
    return VocabularyEntry(str(obj))


def default_vocabulary() -> list[VocabularyEntry]:
    """The paper's 42 OOD objects, labelled OOD."""
    return [VocabularyEntry(name) for name in PAPER_OBJECTS]


def control_vocabulary(classes: Sequence[str] = DEFAULT_CONTROL_CLASSES) -> list[VocabularyEntry]:
    """In-distribution controls: Cityscapes class names labelled with their train ids."""
    out = []
    for name in classes:
        if name not in TRAIN_NAME_TO_ID:
            raise ValueError(
                f"control class {name!r} is not a Cityscapes train class; expected one of {sorted(TRAIN_NAME_TO_ID)}"
            )
        out.append(VocabularyEntry(name, TRAIN_NAME_TO_ID[name]))
    return out


def _entry_from(item: Any, origin: str) -> VocabularyEntry:
    if isinstance(item, VocabularyEntry):
        return item
    if isinstance(item, str):
        return VocabularyEntry(item.strip())
    if isinstance(item, dict):
        if "name" not in item:
            raise ValueError(f"{origin}: vocabulary entry {item!r} has no 'name'")
        label = item.get("label_value", item.get("label", OOD_ID))
        if isinstance(label, str):
            if label.lower() == "ood":
                label = OOD_ID
            elif label in TRAIN_NAME_TO_ID:
                label = TRAIN_NAME_TO_ID[label]
            else:
                raise ValueError(
                    f"{origin}: label {label!r} of {item['name']!r} is neither 'ood' nor a Cityscapes class name"
                )
        if label is None:
            raise ValueError(f"{origin}: the label of {item['name']!r} is empty; expected a train id, a class or 'ood'")
        try:
            return VocabularyEntry(str(item["name"]), int(label), item.get("prompt"))
        except ValueError as e:
            raise ValueError(f"{origin}: {e}") from e
    raise ValueError(f"{origin}: a vocabulary entry must be a name or a mapping with 'name', got {item!r}")


def load_vocabulary(path: str | os.PathLike[str]) -> list[VocabularyEntry]:
    """Read a vocabulary from a text file (one name per line, ``#`` comments) or a YAML/JSON list.

    YAML items are names or mappings ``{name, label_value (train id, class name or "ood"), prompt}``;
    a top-level mapping with an ``objects`` key is accepted too.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"vocabulary file {p} not found; expected a .txt (one name per line) or .yaml/.json list"
        )
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(text)
        if isinstance(data, dict):
            data = data.get("objects")
        if not isinstance(data, list):
            raise ValueError(f"vocabulary file {p}: expected a list of objects (or a mapping with an 'objects' list)")
        entries = [_entry_from(item, str(p)) for item in data]
    else:
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [VocabularyEntry(n) for n in names if n]
    if not entries:
        raise ValueError(f"vocabulary file {p} holds no objects")
    return entries


def resolve_vocabulary(
    spec: str | os.PathLike[str] | Iterable[Any] | None = None, controls: Sequence[str] = ()
) -> list[VocabularyEntry]:
    """A vocabulary from ``spec`` (None/"paper": the 42 objects, a file path, or names/mappings), plus controls."""
    if spec is None or (isinstance(spec, str) and spec == "paper"):
        entries = default_vocabulary()
    elif isinstance(spec, (str, os.PathLike)):
        entries = load_vocabulary(spec)
    else:
        entries = [_entry_from(item, "vocabulary") for item in spec]
        if not entries:
            raise ValueError("the vocabulary list is empty")
    return entries + control_vocabulary(controls)
