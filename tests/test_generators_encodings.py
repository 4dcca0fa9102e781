"""Conditioning encodings: exact values, train ids vs label ids, refused ids, the encoding file beside a ControlNet."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthrel_lightning.generators.encodings import (
    ENCODING_FILE,
    ENCODINGS,
    EncodingError,
    get_encoding,
    read_encoding_file,
    resolve_encoding,
    train_ids_to_label_ids,
    write_encoding_file,
)
from synthrel_lightning.labels import LABEL_TO_TRAIN_ID, OOD_ID

STEM = "frankfurt_000000_000294"


@pytest.fixture(scope="module")
def label_ids(cityscapes_mini: Path) -> np.ndarray:
    return np.asarray(Image.open(cityscapes_mini / f"gtFine/val/frankfurt/{STEM}_gtFine_labelIds.png"))


def test_label_ids_1ch_is_genval_scaling_exactly(label_ids: np.ndarray) -> None:
    enc = ENCODINGS["label_ids_1ch"]
    assert enc.channels == 1
    every = np.arange(34, dtype=np.uint8)[None]
    assert enc.encode(every)[0, 0].tolist() == [(np.float32(i) + 1) / np.float32(34) for i in range(34)]
    # GenVal's dataset.py: cv2.imread(...).astype(np.float32); (source + 1) / 34
    genval = (label_ids.astype(np.float32) + 1) / 34
    out = enc.encode(label_ids)
    assert out.dtype == np.float32 and out.shape == (1, *label_ids.shape)
    assert np.array_equal(out[0], genval)


# ADE20K palette colours (mmsegmentation ADE20KDataset.PALETTE / ControlNet's annotator/uniformer).
ADE = {
    "road": (140, 140, 140),
    "sidewalk": (235, 255, 7),
    "building": (180, 120, 120),
    "tree": (4, 200, 3),
    "sky": (6, 230, 230),
    "car": (0, 102, 200),
    "person": (150, 5, 61),
}


@pytest.mark.parametrize(
    "label_id,ade",
    [(7, "road"), (8, "sidewalk"), (11, "building"), (21, "tree"), (23, "sky"), (26, "car"), (24, "person")],
)
def test_ade20k_palette_draws_the_closest_ade20k_class(label_id: int, ade: str) -> None:
    rgb = ENCODINGS["ade20k_palette"].encode(np.full((2, 3), label_id, np.uint8))
    assert rgb.shape == (3, 2, 3)
    assert tuple(int(v) for v in np.round(rgb[:, 0, 0] * 255)) == ADE[ade]


def test_palettes_onehot_and_train_ids(label_ids: np.ndarray) -> None:
    cs = ENCODINGS["cityscapes_palette"].encode(np.array([[7, 26]], np.uint8))
    assert np.round(cs[:, 0, 0] * 255).tolist() == [128, 64, 128] and np.round(cs[:, 0, 1] * 255).tolist() == [
        0,
        0,
        142,
    ]
    unlabeled = ENCODINGS["ade20k_palette"].encode(np.zeros((1, 1), np.uint8))
    assert unlabeled.ravel().tolist() == [0, 0, 0]
    onehot = ENCODINGS["onehot_label_ids"].encode(label_ids)
    assert onehot.shape == (34, *label_ids.shape) and np.array_equal(onehot.argmax(0), label_ids)
    assert np.array_equal(onehot.sum(0), np.ones(label_ids.shape, np.float32))
    # Train ids: converted to label ids first (void -> unlabeled), same values on every class pixel.
    train = LABEL_TO_TRAIN_ID[label_ids]
    via_train = ENCODINGS["label_ids_1ch"].encode(train, ids="train_ids")
    keep = train != 255
    assert np.array_equal(via_train[0][keep], ENCODINGS["label_ids_1ch"].encode(label_ids)[0][keep])
    assert np.all(via_train[0][~keep] == np.float32(1) / np.float32(34))


def test_ids_an_encoding_cannot_express_are_refused(label_ids: np.ndarray) -> None:
    enc = get_encoding("label_ids_1ch")
    bad = label_ids.copy()
    bad[0, 0] = 40
    with pytest.raises(EncodingError, match=r"holds values \[40\] that encoding 'label_ids_1ch' cannot express"):
        enc.encode(bad, what="frame x")
    train = LABEL_TO_TRAIN_ID[label_ids].copy()
    train[1, 1] = OOD_ID
    with pytest.raises(EncodingError, match=r"frame y holds values \[254\] that are not Cityscapes train ids"):
        enc.encode(train, ids="train_ids", what="frame y")
    with pytest.raises(EncodingError, match=r"expected an \(H, W\) map"):
        enc.encode(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(EncodingError, match="unknown conditioning encoding 'rgb'"):
        get_encoding("rgb")


def test_train_ids_to_label_ids_round_trip(cityscapes_mini: Path) -> None:
    train_ids = np.asarray(Image.open(cityscapes_mini / f"gtFine/val/frankfurt/{STEM}_gtFine_labelTrainIds.png"))
    ids = train_ids_to_label_ids(train_ids)
    assert np.array_equal(LABEL_TO_TRAIN_ID[ids], train_ids) and ids[train_ids == 255].max(initial=0) == 0
    assert train_ids_to_label_ids(np.arange(19, dtype=np.uint8)).tolist() == [
        7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
    ]  # fmt: skip


def test_encoding_file_and_channel_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "cn"
    write_encoding_file(folder, "label_ids_1ch")
    assert json.loads((folder / ENCODING_FILE).read_text())["encoding"] == "label_ids_1ch"
    assert read_encoding_file(folder).name == "label_ids_1ch"
    assert resolve_encoding(folder, 1).name == "label_ids_1ch"
    with pytest.raises(
        EncodingError, match=r"'label_ids_1ch' has 1 channel\(s\) but ControlNet .* conditioning_channels=3"
    ):
        resolve_encoding(folder, 3)
    with pytest.raises(
        EncodingError, match="was trained with encoding 'label_ids_1ch'.*'ade20k_palette' was requested"
    ):
        resolve_encoding(folder, 1, "ade20k_palette")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(EncodingError, match=f"has no {ENCODING_FILE}.*pass encoding="):
        resolve_encoding(bare, 3)
    with caplog.at_level(logging.WARNING):
        assert resolve_encoding(bare, 3, "ade20k_palette").name == "ade20k_palette"
    assert "not verifiable" in caplog.text
    (bare / ENCODING_FILE).write_text("{not json")
    with pytest.raises(EncodingError, match="is not a valid encoding file"):
        read_encoding_file(bare)
