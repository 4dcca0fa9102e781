"""Robust reading of images and label maps, with errors that name the file and the problem."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from synthrel_lightning.png_check import PNG_SIGNATURE as _PNG_SIGNATURE
from synthrel_lightning.png_check import png_bytes_damage as _png_damage
from synthrel_lightning.png_check import png_damage

__all__ = [
    "DatasetError",
    "read_image",
    "read_label",
    "check_same_size",
    "check_label_values",
    "describe_values",
    "png_damage",
]

PathLike = str | os.PathLike[str]

# Modes PIL may hand back for a colour photograph; all convert losslessly enough to RGB.
_COLOUR_MODES = {"RGB", "P", "CMYK", "YCbCr", "LAB", "HSV"}
# Single-channel integer modes a label map can be stored in.
_LABEL_INT_MODES = {"L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N"}


try:  # libspng decodes PNGs ~1.4x faster than libpng (optional extra ``fast-png``)
    import pyspng as _spng
except ImportError:  # pragma: no cover - depends on the installed extras
    _spng = None

PNG_DECODER: str = "libspng" if _spng is not None else "libpng"
"""Decoder of the fast PNG path: ``"libspng"`` (``pyspng``, when installed) or ``"libpng"`` (OpenCV)."""

_PNG_GREY, _PNG_RGB = 0, 2  # IHDR colour types decoded by the fast path (8 bits per sample)


class DatasetError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent (the message names it)."""


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        if path.exists():
            raise DatasetError(f"{what} {path} is not a regular file")
        raise DatasetError(f"{what} {path} not found")


_CHECKED: dict[str, tuple[int, ...]] = {}  # path -> identity of the file when it passed _png_damage
_CHECKED_MAX = 200_000


def _png_bytes(path: Path, what: str) -> bytes | None:
    """The bytes of ``path`` when it is a PNG file (checked whole: :func:`_png_damage`); ``None`` otherwise."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise DatasetError(f"{what} {path} cannot be read ({exc})") from exc
    if data[:8] != _PNG_SIGNATURE:
        return None
    # A file checked before in this process and not changed since (any write, rename or utime
    # moves its inode change time) is not inflated twice: workers kept across epochs check once.
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if len(data) == st.st_size and _CHECKED.get(str(path)) == ident:
        return data
    damage = _png_damage(data)
    if damage is not None:
        raise DatasetError(f"{what} {path} is corrupt or truncated: {damage}; re-download or re-extract it")
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[str(path)] = ident
    return data


def _fast_png(data: bytes, colour_type: int) -> np.ndarray | None:
    """Decode checked 8-bit PNG bytes of IHDR ``colour_type`` with :data:`PNG_DECODER`, or None to leave them to PIL.

    Only the simple, common layouts take this path (8-bit grey or RGB); every other layout,
    any decoding failure and any unexpected result return None, so PIL decides and names
    the problem. An RGB result is returned in RGB order. ``data`` has passed
    :func:`_png_damage`, so the decoders need not check chunk CRCs or the zlib stream.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[25] != colour_type:
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    expected = (height, width) if colour_type == _PNG_GREY else (height, width, 3)
    if PNG_DECODER == "libspng" and _spng is not None:
        try:
            arr = _spng.load(data)  # RGB order already
        except (RuntimeError, ValueError):
            return None
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return arr if arr.dtype == np.uint8 and arr.shape == expected else None
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.dtype != np.uint8 or arr.shape != expected:
        return None
    if colour_type == _PNG_RGB:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return arr


def _decode(path: Path, data: bytes | None = None) -> Image.Image:
    """Open and fully decode ``path`` (from ``data`` when given), closing the file if decoding fails."""
    img: Image.Image | None = None
    try:
        img = Image.open(path if data is None else io.BytesIO(data))
        # Image.open only parses the header; load() decodes every pixel, which is what
        # exposes truncated or corrupt payloads.
        img.load()
    except BaseException:
        if img is not None:
            img.close()
        raise
    return img


def _open_fully(path: Path, what: str, data: bytes | None = None) -> Image.Image:
    """Open ``path`` (its bytes ``data`` when read already) with PIL and decode it fully, so damage fails here."""
    _check_file(path, what)
    try:
        return _decode(path, data)
    except UnidentifiedImageError as exc:
        raise DatasetError(f"{what} {path} is not a readable image file (unknown or corrupt format): {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(
            f"{what} {path} is corrupt or truncated ({type(exc).__name__}: {exc}); re-download or re-extract it"
        ) from exc


def read_image(path: PathLike, allow_grayscale: bool = False) -> np.ndarray:
    """Read a colour image as a uint8 ``(H, W, 3)`` RGB array (png/jpg/webp/...).

    A PNG file is first checked whole (chunk CRCs, zlib stream and its Adler-32, size), as
    no decoder here refuses every damaged stream; 8-bit RGB PNGs are then decoded by
    :data:`PNG_DECODER` (faster than PIL, same pixels); everything else, and any file it
    cannot decode, goes through PIL, whose errors name the file.
    """
    path = Path(path)
    _check_file(path, "image")
    data = _png_bytes(path, "image")
    fast = _fast_png(data, _PNG_RGB) if data is not None else None
    if fast is not None:
        return fast
    img = _open_fully(path, "image", data)
    mode = img.mode
    if mode == "RGBA" or mode == "LA" or mode == "PA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise DatasetError(
                f"image {path} has a transparent alpha channel (mode {mode}); expected an opaque RGB image"
            )
        img = img.convert("RGB" if mode != "LA" else "L")
        mode = img.mode
    if mode in ("L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        if not allow_grayscale:
            raise DatasetError(
                f"image {path} has 1 channel (PIL mode {mode!r}); expected a 3-channel RGB image "
                "(is a label map stored in the image folder?)"
            )
        if mode not in ("L", "1"):
            raise DatasetError(f"image {path} has a {mode!r} high-bit-depth grayscale format; expected 8-bit RGB")
        img = img.convert("L")
        arr = np.array(img, dtype=np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode not in _COLOUR_MODES:
        raise DatasetError(f"image {path} has unsupported PIL mode {mode!r}; expected an 8-bit RGB image")
    if mode != "RGB":
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f"image {path} decoded to shape {arr.shape}; expected (H, W, 3)")
    return np.ascontiguousarray(arr)


def read_label(path: PathLike) -> np.ndarray:
    """Read a single-channel label map as a uint8 ``(H, W)`` array of class values.

    Palette PNGs give their palette indices (the class ids), 16/32-bit maps are accepted
    when every value fits in 0..255, and an RGB(A) file is accepted only when its three
    channels are identical (a grey map saved as colour); a colour-coded map is an error.
    PNG files are checked whole first (see :func:`read_image`); 8-bit grey PNGs are decoded by
    :data:`PNG_DECODER` (same values as PIL), everything else by PIL.
    """
    path = Path(path)
    _check_file(path, "label")
    data = _png_bytes(path, "label")
    fast = _fast_png(data, _PNG_GREY) if data is not None else None
    if fast is not None:
        return fast
    img = _open_fully(path, "label", data)
    mode = img.mode
    if mode in _LABEL_INT_MODES:
        arr = np.array(img)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if arr.ndim != 2:
            raise DatasetError(f"label {path} decoded to shape {arr.shape}; expected a single-channel (H, W) map")
        if arr.dtype != np.uint8:
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
                bad = np.unique(arr[(arr < 0) | (arr > 255)])
                raise DatasetError(
                    f"label {path} (PIL mode {mode!r}) holds values {describe_values(bad)} outside 0..255; "
                    "expected class ids that fit in 8 bits (is this an instance-id map?)"
                )
            arr = arr.astype(np.uint8)
        return np.ascontiguousarray(arr)
    if mode in ("RGB", "RGBA", "LA"):
        arr = np.array(img)
        if mode in ("RGBA", "LA") and arr[..., -1].min() < 255:
            raise DatasetError(
                f"label {path} has a transparent alpha channel (mode {mode}); expected a single-channel map"
            )
        first = arr[..., 0]
        channels = arr.shape[2] - (1 if mode in ("RGBA", "LA") else 0)
        if all(np.array_equal(first, arr[..., c]) for c in range(1, channels)):
            return np.ascontiguousarray(first.astype(np.uint8))
        raise DatasetError(
            f"label {path} has {channels} differing colour channels (PIL mode {mode!r}); expected a "
            "single-channel map of class ids (a colour-coded visualisation cannot be used as a label)"
        )
    raise DatasetError(f"label {path} has unsupported PIL mode {mode!r}; expected a single-channel integer map")


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: PathLike, label_path: PathLike) -> None:
    """Raise :class:`DatasetError` naming both files unless ``label`` has the image's height and width."""
    ih, iw = image.shape[:2]
    lh, lw = label.shape[:2]
    if (ih, iw) != (lh, lw):
        raise DatasetError(
            f"label {label_path} is {lw}x{lh} (WxH) but image {image_path} is {iw}x{ih}; "
            "a label must have exactly its image's size"
        )


def describe_values(values: Iterable[int], limit: int = 20) -> str:
    """Compact text for a set of integers, with runs collapsed: ``0..18, 255``."""
    vals = sorted({int(v) for v in values})
    runs: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        runs.append(str(vals[i]) if i == j else (f"{vals[i]}, {vals[j]}" if j == i + 1 else f"{vals[i]}..{vals[j]}"))
        i = j + 1
    if len(runs) > limit:
        runs = [*runs[:limit], f"... ({len(vals)} values)"]
    return "{" + ", ".join(runs) + "}"


def check_label_values(label: np.ndarray, allowed: Iterable[int], path: PathLike, what: str = "label values") -> None:
    """Raise :class:`DatasetError` naming ``path``, the stray and the allowed values, if any value is not allowed."""
    allowed_set = {int(v) for v in allowed}
    if label.dtype == np.uint8 and label.ndim == 2 and label.size:
        # A histogram over 0..255: one pass, ~3x cheaper than np.bincount on a 2048x1024 map.
        hist = cv2.calcHist([np.ascontiguousarray(label)], [0], None, [256], [0, 256])
        present = np.flatnonzero(hist.ravel())
    elif label.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    else:
        present = np.unique(label)
    stray = sorted(int(v) for v in present if int(v) not in allowed_set)
    if stray:
        counts = {v: int(np.count_nonzero(label == v)) for v in stray[:5]}
        where = ", ".join(f"{v}: {n} px" for v, n in counts.items())
        raise DatasetError(
            f"label {path} contains unexpected {what} {describe_values(stray)} ({where}); "
            f"expected only {describe_values(allowed_set)}"
        )
