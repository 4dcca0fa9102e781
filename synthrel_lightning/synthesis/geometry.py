"""The one box type of the synthesis geometry: a square ``side x side`` at ``(x0, y0)`` in pixels.

Placements (:class:`~synthrel_lightning.synthesis.placement.Placement` is a :class:`Box`),
context crops, the inpainted square of a result and the box handed to object maskers
are all :class:`Box` values; :meth:`Box.coerce` accepts the plain forms users write in
configs or code (``(x0, y0, side)``, ``{"x0": .., "y0": .., "side": ..}``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Box"]


@dataclass(frozen=True)
class Box:
    """A square box: top-left corner ``(x0, y0)`` and ``side`` in pixels; right/bottom ends are exclusive."""

    x0: int
    y0: int
    side: int

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "side"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.side < 1:
            raise ValueError(f"box side must be >= 1, got {self.side}")

    @classmethod
    def coerce(cls, value: Any) -> Box:
        """A :class:`Box` from a Box, an ``(x0, y0, side)`` sequence or a mapping with keys x0, y0, side."""
        if isinstance(value, Box):
            return Box(value.x0, value.y0, value.side)
        if isinstance(value, Mapping):
            try:
                return cls(value["x0"], value["y0"], value["side"])
            except KeyError as e:
                raise ValueError(f"a box mapping needs keys x0, y0, side; got {sorted(value)}") from e
        try:
            x0, y0, side = value
        except (TypeError, ValueError) as e:
            raise ValueError(f"a box must be a Box, (x0, y0, side) or a mapping, got {value!r}") from e
        return cls(x0, y0, side)

    @property
    def x1(self) -> int:
        """Exclusive right edge."""
        return self.x0 + self.side

    @property
    def y1(self) -> int:
        """Exclusive bottom edge."""
        return self.y0 + self.side

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` with exclusive ends."""
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` slices selecting the box in an (H, W, ...) array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def shifted(self, dx: int, dy: int) -> Box:
        """The same square moved by ``(dx, dy)`` (e.g. into crop coordinates with ``-crop.x0, -crop.y0``)."""
        return Box(self.x0 + dx, self.y0 + dy, self.side)

    def fits(self, height: int, width: int) -> bool:
        """True when the box lies inside an ``height x width`` frame."""
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height

    def as_box(self) -> Box:
        """The bare box (drops the extra fields of subclasses such as Placement)."""
        return Box(self.x0, self.y0, self.side)

    def __iter__(self) -> Iterator[int]:
        """``x0, y0, side``: ``list(box)`` is the JSON form stored in bank metadata."""
        return iter((self.x0, self.y0, self.side))
