"""The bytes of one outlier bank entry: a self-checking file format, its encoder and decoder.

Format 2 (``FORMAT_VERSION``): a magic number, the header length, a JSON header (the metadata, the
array layout, the codec and a SHA-256 checksum of arrays and metadata), then the raw array bytes,
optionally zlib-compressed; reading an uncompressed entry costs a file read and a hash, and the
decoded arrays view the bytes without a copy. Format 1 entries are NumPy ``.npz`` archives of the
same content; both are decoded. A file that cannot be decoded or fails its checksum raises
:class:`CorruptEntryError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from synthrel_lightning.synthesis.outlier_entry import OutlierEntry

__all__ = ["FORMAT_VERSION", "CorruptEntryError", "decode_entry", "encode_entry", "read_writable"]

FORMAT_VERSION = 2
_MAGIC = b"\x93SRBANK\x02"
_HEADER = struct.Struct("<I")  # header length, after the magic


class CorruptEntryError(RuntimeError):
    """An entry file exists but cannot be decoded or fails its checksum."""


def _checksum(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")  # the raw bytes, without a copy
    h.update(meta_json.encode("utf-8"))
    return h.hexdigest()


def encode_entry(entry: OutlierEntry, compress: bool = True, version: int = FORMAT_VERSION) -> bytes:
    """Serialise an entry to self-checking bytes: the raw entry format (``version=2``) or an ``.npz`` (1)."""
    arrays = {"rgb": entry.rgb, "alpha": entry.alpha}
    if entry.label is not None:
        arrays["label"] = entry.label
    meta_json = json.dumps(entry._meta(), sort_keys=True, default=str)
    checksum = _checksum(arrays, meta_json)
    if version == 1:
        buf = io.BytesIO()
        save = np.savez_compressed if compress else np.savez
        save(
            buf,
            **arrays,  # type: ignore[arg-type]  # numpy's stub: a ** mapping might hold allow_pickle
            meta=np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8),
            checksum=np.frombuffer(checksum.encode("ascii"), dtype=np.uint8),
        )
        return buf.getvalue()
    if version != 2:
        raise ValueError(f"outlier bank entry format version must be 1 or 2, got {version!r}")
    layout = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        layout.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes})
    payload = b"".join(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data for a in arrays.values())
    if compress:
        payload = zlib.compress(payload, 1)
    header = json.dumps(
        {"meta": meta_json, "arrays": layout, "codec": "zlib" if compress else "raw", "checksum": checksum}
    ).encode("utf-8")
    return b"".join((_MAGIC, _HEADER.pack(len(header)), header, payload))


def _decode_raw(data: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], str, str]:
    """Arrays (views of ``data``, no copy when uncompressed), metadata JSON and stored checksum of a raw entry."""
    view = memoryview(data)
    start = len(_MAGIC) + _HEADER.size
    if len(view) < start:
        raise ValueError(f"{len(view)} bytes is shorter than the entry header")
    (n,) = _HEADER.unpack_from(view, len(_MAGIC))
    if start + n > len(view):
        raise ValueError(f"the header claims {n} bytes but the file ends {len(view) - start} bytes after its start")
    header = json.loads(bytes(view[start : start + n]).decode("utf-8"))
    payload = view[start + n :]
    if header["codec"] == "zlib":
        inflate = zlib.decompressobj()
        raw = inflate.decompress(payload)
        if not inflate.eof or inflate.unused_data:
            raise ValueError("the compressed data is truncated or followed by extra bytes")
        payload = memoryview(bytearray(raw))
    elif header["codec"] != "raw":
        raise ValueError(f"unknown codec {header['codec']!r}")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in header["arrays"]:
        dtype, shape, nbytes = np.dtype(spec["dtype"]), tuple(int(v) for v in spec["shape"]), int(spec["nbytes"])
        if offset + nbytes > len(payload):
            raise ValueError(f"array {spec['name']!r} runs past the end of the data (truncated file?)")
        arrays[spec["name"]] = np.frombuffer(payload, dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(
            shape
        )
        offset += nbytes
    if offset != len(payload):
        raise ValueError(f"{len(payload) - offset} bytes of data after the last array")
    return arrays, str(header["meta"]), str(header["checksum"])


def decode_entry(data: bytes | bytearray | Path, origin: str = "<bytes>") -> OutlierEntry:
    """Decode and verify an entry (either format); raises :class:`CorruptEntryError` naming ``origin``."""
    try:
        if isinstance(data, Path):
            data = data.read_bytes()
        if bytes(data[: len(_MAGIC)]) == _MAGIC:
            arrays, meta_json, stored = _decode_raw(data)
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("rgb", "alpha", "label") if k in z.files}
                meta_json = z["meta"].tobytes().decode("utf-8")
                stored = z["checksum"].tobytes().decode("ascii")
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        zlib.error,
    ) as e:
        raise CorruptEntryError(
            f"outlier bank entry {origin} is unreadable ({type(e).__name__}: {e}); delete it or regenerate"
        ) from e
    if _checksum(arrays, meta_json) != stored:
        raise CorruptEntryError(f"outlier bank entry {origin} fails its checksum; delete it or regenerate")
    meta = json.loads(meta_json)
    return OutlierEntry(rgb=arrays["rgb"], alpha=arrays["alpha"], label=arrays.get("label"), **meta)


def read_writable(path: Path) -> bytearray:
    """The bytes of ``path`` in a fresh writable buffer (arrays viewing it are writable, as NumPy's own)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        got = f.readinto(buf)
        if got != size:
            del buf[got:]
        return buf
