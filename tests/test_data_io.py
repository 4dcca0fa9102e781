"""Image/label reading and the consistency checks of synthrel_lightning.data.io, on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthrel_lightning.data import io as data_io
from synthrel_lightning.data.io import (
    DatasetError,
    check_label_values,
    check_same_size,
    describe_values,
    read_image,
    read_label,
)


def _rgb(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_read_image_png_exact_and_lossy_formats(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out, arr)
    smooth = np.zeros((24, 40, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 2] = 50
    for ext in ("jpg", "webp"):
        Image.fromarray(smooth).save(tmp_path / f"a.{ext}", quality=95)
        out = read_image(tmp_path / f"a.{ext}")
        assert out.shape == (24, 40, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - smooth).max() <= 6


def test_read_image_palette_and_opaque_rgba_become_rgb(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (24, 40, 3)
    rgba = np.concatenate([arr, np.full((24, 40, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), arr)


def test_read_image_rejects_transparent_and_single_channel(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.zeros((24, 40, 1), np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    with pytest.raises(DatasetError, match=r"t\.png.*transparent"):
        read_image(tmp_path / "t.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(DatasetError, match=r"gray\.png has 1 channel.*expected a 3-channel RGB"):
        read_image(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png", allow_grayscale=True).shape == (8, 8, 3)


def test_read_image_missing_corrupt_truncated(tmp_path: Path, png_decoder: str) -> None:
    with pytest.raises(DatasetError, match=r"nope\.png not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DatasetError, match=r"garbage\.png is not a readable image"):
        read_image(tmp_path / "garbage.png")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"half\.png is corrupt or truncated"):
        read_image(tmp_path / "half.png")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"half\.jpg is corrupt or truncated"):
        read_image(tmp_path / "half.jpg")
    with pytest.raises(DatasetError, match="is not a regular file"):
        read_image(tmp_path)


def test_read_label_modes(tmp_path: Path) -> None:
    lab = np.random.default_rng(1).integers(0, 34, (16, 20), dtype=np.uint8)
    Image.fromarray(lab).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), lab)
    # Palette labels: the stored indices are the class ids, whatever the palette colours.
    pal = Image.fromarray(lab, "L").convert("P")
    pal.putdata(lab.ravel().tolist())
    pal.putpalette([(i * 37) % 256 for i in range(768)])
    pal.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), lab)
    Image.fromarray(lab.astype(np.uint16)).save(tmp_path / "i16.png")
    with Image.open(tmp_path / "i16.png") as im:
        assert im.mode.startswith("I")
    out = read_label(tmp_path / "i16.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, lab)
    Image.fromarray(np.repeat(lab[:, :, None], 3, axis=2)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "grey_rgb.png"), lab)


def test_read_label_rejects_wide_values_and_colour_maps(tmp_path: Path) -> None:
    inst = np.full((8, 8), 26001, dtype=np.uint16)
    inst[0, 0] = 7
    Image.fromarray(inst).save(tmp_path / "inst.png")
    with pytest.raises(DatasetError, match=r"inst\.png .*values \{26001\} outside 0\.\.255"):
        read_label(tmp_path / "inst.png")
    col = _rgb(8, 8)
    Image.fromarray(col).save(tmp_path / "color.png")
    with pytest.raises(DatasetError, match=r"color\.png has 3 differing colour channels.*single-channel"):
        read_label(tmp_path / "color.png")
    with pytest.raises(DatasetError, match=r"missing_labels\.png not found"):
        read_label(tmp_path / "missing_labels.png")


def test_check_same_size_names_both_files_and_sizes() -> None:
    check_same_size(np.zeros((4, 6, 3)), np.zeros((4, 6)), "img.png", "lab.png")
    with pytest.raises(DatasetError, match=r"label lab\.png is 5x4 \(WxH\) but image img\.png is 6x4"):
        check_same_size(np.zeros((4, 6, 3)), np.zeros((4, 5)), "img.png", "lab.png")


def test_check_label_values() -> None:
    lab = np.array([[0, 1, 255], [1, 0, 0]], np.uint8)
    check_label_values(lab, (0, 1, 255), "x.png")
    lab[0, 0] = 7
    lab[1, 1] = 9
    with pytest.raises(DatasetError) as err:
        check_label_values(lab, (0, 1, 255), "x.png", "OOD values")
    msg = str(err.value)
    assert "x.png" in msg and "{7, 9}" in msg and "expected only {0, 1, 255}" in msg and "7: 1 px" in msg


def test_describe_values_collapses_runs() -> None:
    assert describe_values([*range(19), 255]) == "{0..18, 255}"
    assert describe_values([3, 1, 2, 7, 8]) == "{1..3, 7, 8}"
    assert describe_values([]) == "{}"


def _pil_reference(path: Path, label: bool) -> np.ndarray:
    """What PIL alone decodes (the slow path's result)."""
    with Image.open(path) as im:
        if label:
            arr = np.array(im)
            return arr.astype(np.uint8)
        return np.array(im.convert("RGB"))


@pytest.fixture(params=["libspng", "libpng"])
def png_decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each fast PNG decoder in turn (libspng needs the ``fast-png`` extra)."""
    if request.param == "libspng":
        pytest.importorskip("pyspng")
    monkeypatch.setattr(data_io, "PNG_DECODER", request.param)
    return request.param


@pytest.mark.parametrize(
    ("mode", "label"),
    [("RGB", False), ("P", False), ("L", True), ("P", True), ("1", True), ("I;16", True)],
)
def test_fast_png_decoding_matches_pil_on_every_layout(
    tmp_path: Path, mode: str, label: bool, png_decoder: str
) -> None:
    rng = np.random.default_rng(3)
    if mode == "RGB":
        img = Image.fromarray(_rgb(37, 53))
    elif mode == "1":
        img = Image.fromarray(rng.integers(0, 2, (37, 53)).astype(bool))
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 256, (37, 53)).astype(np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 34, (37, 53), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"x_{mode.replace(';', '')}.png"
    img.save(path)
    got = read_label(path) if label else read_image(path)
    np.testing.assert_array_equal(got, _pil_reference(path, label))
    if mode == "1":  # 1-bit labels keep their 0/1 values (not rescaled to 0/255)
        assert set(np.unique(got).tolist()) <= {0, 1}


def test_truncated_and_corrupt_labels_still_name_the_file(tmp_path: Path, png_decoder: str) -> None:
    labels = np.random.default_rng(0).integers(0, 34, (64, 64), dtype=np.uint8)
    Image.fromarray(labels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half_gtFine.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"label .*half_gtFine\.png is corrupt or truncated"):
        read_label(tmp_path / "half_gtFine.png")
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF  # inside the compressed pixel data
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    with pytest.raises(DatasetError, match=r"flipped\.png is corrupt or truncated"):
        read_label(tmp_path / "flipped.png")


def test_label_value_check_on_large_uint8_maps_counts_every_value() -> None:
    label = np.zeros((1024, 2048), np.uint8)
    label[1023, 2047] = 77  # one stray pixel in a full-size frame
    with pytest.raises(DatasetError, match=r"unexpected label values \{77\} \(77: 1 px\)"):
        check_label_values(label, range(34), "big.png")
    check_label_values(label[:, :2047], range(34), "big.png")  # non-contiguous view, no stray value


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of every chunk of a PNG file."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        out.append((pos, data[pos + 4 : pos + 8], length))
        pos += 12 + length
    return out


def _flip_in_idat_keeping_crcs(data: bytes, fraction: float) -> bytes:
    """Flip one byte of the compressed pixel data and rewrite that chunk's CRC-32 (a valid chunk, damaged stream)."""
    import zlib

    idats = [(pos, length) for pos, kind, length in _png_chunks(data) if kind == b"IDAT"]
    pos, length = idats[0]
    out = bytearray(data)
    out[pos + 8 + min(int(fraction * length), length - 1)] ^= 0x5A
    crc = zlib.crc32(bytes(out[pos + 4 : pos + 8 + length]))
    out[pos + 8 + length : pos + 12 + length] = crc.to_bytes(4, "big")
    return bytes(out)


@pytest.mark.parametrize("label", [False, True])
def test_damaged_compressed_data_with_valid_chunk_crcs_is_never_decoded_to_wrong_pixels(
    tmp_path: Path, png_decoder: str, label: bool
) -> None:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 34, (48, 64), dtype=np.uint8) if label else _rgb(48, 64, seed=5)
    arr = np.repeat(np.repeat(arr, 2, axis=0), 2, axis=1)  # compressible, so the stream has structure
    Image.fromarray(arr).save(tmp_path / "clean.png")
    data = (tmp_path / "clean.png").read_bytes()
    read = read_label if label else read_image
    wrong, rejected = [], 0
    for i in range(30):
        path = tmp_path / f"damaged_{i}.png"
        path.write_bytes(_flip_in_idat_keeping_crcs(data, (i + 0.5) / 30))
        try:
            got = read(path)
        except DatasetError as err:
            assert path.name in str(err)
            rejected += 1
            continue
        if not np.array_equal(got, arr):
            wrong.append(i)
    assert not wrong, f"{png_decoder}: {len(wrong)} of 30 damaged files decoded to wrong pixels"
    assert rejected >= 25


def test_a_png_damaged_after_a_good_read_is_checked_again(tmp_path: Path, png_decoder: str) -> None:
    import os

    path = tmp_path / "frame.png"
    Image.fromarray(np.repeat(_rgb(24, 32, seed=1), 2, axis=0)).save(path)
    read_image(path)  # checked once, remembered
    keep = path.stat()
    path.write_bytes(_flip_in_idat_keeping_crcs(path.read_bytes(), 0.5))
    os.utime(path, ns=(keep.st_atime_ns, keep.st_mtime_ns))  # same size and modification time
    with pytest.raises(DatasetError, match=r"frame\.png is corrupt"):
        read_image(path)
