"""Whether a PNG file is intact: every chunk complete with its CRC-32, the pixel stream whole and of the right size.

Used before a PNG is trusted: by :mod:`synthrel_lightning.data.io` when it reads images and label maps,
and by ``generate`` when it resumes over outputs a previous run wrote.
"""

from __future__ import annotations

import os
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG file starts with."""
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each IHDR colour type


def png_bytes_damage(data: bytes) -> str | None:
    """Why the PNG file ``data`` is damaged, or ``None`` when its chunks and pixel stream are intact.

    Checks every chunk up to IEND (complete, CRC-32 matching) and the compressed pixel data:
    the IDAT chunks' zlib stream must inflate without error to its end, pass its Adler-32
    check, hold exactly the bytes the header's size and layout call for, and nothing may
    follow it. A decoder cannot be trusted with this: libspng (as ``pyspng`` builds it)
    checks neither chunk CRCs nor the Adler-32, and libpng (OpenCV, PIL) only warns about
    a failed Adler-32 once every row is decoded, so a damaged stream whose chunk CRCs were
    rewritten decodes to wrong pixels. Inflating costs about as much as libspng's decode.
    """
    pos, end = 8, len(data)
    idat: list[bytes] = []
    header = b""
    while True:
        if pos + 12 > end:
            return "it ends before its IEND chunk (truncated)"
        length = int.from_bytes(data[pos : pos + 4], "big")
        stop = pos + 8 + length
        if stop + 4 > end:
            return "a chunk runs past the end of the file (truncated)"
        kind = data[pos + 4 : pos + 8]
        if zlib.crc32(data[pos + 4 : stop]) != int.from_bytes(data[stop : stop + 4], "big"):
            return f"its {kind.decode('latin-1')!r} chunk fails its CRC-32 check"
        if kind == b"IHDR":
            header = data[pos + 8 : stop]
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : stop])
        elif kind == b"IEND":
            break
        pos = stop + 4
    if len(header) != 13 or not idat:
        return "it has no valid IHDR or no IDAT chunk"
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat))
    except zlib.error as exc:
        return f"its compressed pixel data is corrupt ({exc})"
    if not inflater.eof:
        return "its compressed pixel data ends early (truncated)"
    if inflater.unused_data:
        return "bytes follow the end of its compressed pixel data"
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, interlace = header[8], header[9], header[12]
    if interlace == 0 and colour in _CHANNELS:
        row = (width * depth * _CHANNELS[colour] + 7) // 8
        if len(raw) != height * (1 + row):
            return f"its pixel data holds {len(raw)} bytes, its {width}x{height} header calls for {height * (1 + row)}"
    return None


def png_damage(path: str | os.PathLike[str]) -> str | None:
    """Why the PNG file ``path`` is damaged or unreadable (see :func:`png_bytes_damage`), or ``None`` if intact."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"it cannot be read ({exc})"
    if data[:8] != PNG_SIGNATURE:
        return "it is not a PNG file (no PNG signature)"
    return png_bytes_damage(data)


__all__ = ["PNG_SIGNATURE", "png_bytes_damage", "png_damage"]
