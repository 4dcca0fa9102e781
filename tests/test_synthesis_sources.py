"""Paste sources: procedural shapes, COCO-format cut-outs (polygon and RLE), banked outliers, fill_bank."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthrel_lightning.synthesis.bank import OutlierBank, OutlierEntry
from synthrel_lightning.synthesis.sources import (
    BankSource,
    CocoObjectSource,
    ProceduralObjectSource,
    ProducerSpec,
    decode_coco_rle,
    fill_bank,
)


def test_procedural_source_is_deterministic_and_valid() -> None:
    src = ProceduralObjectSource(size_range=(32, 64))
    a = src.sample(np.random.default_rng(5))
    b = src.sample(np.random.default_rng(5))
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    seen = set()
    for s in range(60):
        e = src.sample(np.random.default_rng(s))
        h, w = e.alpha.shape
        assert 32 <= h <= 64 and e.rgb.shape == (h, w, 3)
        # Opaque inside, transparent at the border, feathered in between.
        assert e.alpha.max() >= 200 and e.alpha[0, :].max() == 0 and e.alpha[:, -1].max() == 0
        assert ((e.alpha > 0) & (e.alpha < 255)).any()
        assert e.label_value == 254
        seen.add((e.metadata["shape"], e.metadata["texture"]))
    assert len(seen) > 8


def test_procedural_in_distribution_controls() -> None:
    src = ProceduralObjectSource(in_distribution_ids=(11, 13), in_distribution_fraction=0.5)
    values = [src.sample(np.random.default_rng(s)).label_value for s in range(100)]
    assert set(values) == {254, 11, 13}
    assert 30 < values.count(254) < 70
    with pytest.raises(ValueError, match="in_distribution_ids"):
        ProceduralObjectSource(in_distribution_fraction=0.2)
    with pytest.raises(ValueError, match="unknown shapes"):
        ProceduralObjectSource(shapes=("cube",))


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string (transcribed from maskApi.c rleToString), for the fixture."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _rle_counts(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
    return np.diff(np.concatenate([[0], change])).tolist()


def test_rle_decoder_known_string() -> None:
    # Worked by hand from maskApi.c: 100 -> "T3", 5 -> "5", 200 -> "X6" (no delta before the
    # fourth count), 3 - 5 = -2 -> "N".
    assert _rle_string([100, 5, 200, 3]) == "T35X6N"
    mask = decode_coco_rle("T35X6N", 14, 22)
    flat = mask.T.reshape(-1)
    assert flat[:100].sum() == 0 and flat[100:105].all() and flat[105:305].sum() == 0 and flat[305:].all()
    with pytest.raises(ValueError, match="sum"):
        decode_coco_rle([1, 2], 3, 3)


@pytest.fixture()
def coco(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    h, w = 48, 64
    img = np.zeros((h, w, 3), np.uint8)
    img[10:21, 10:31] = (255, 0, 0)  # polygon object: red rectangle
    disk = (np.arange(h)[:, None] - 30) ** 2 + (np.arange(w)[None] - 45) ** 2 <= 8**2
    img[disk] = (0, 255, 0)  # RLE object: green disk
    ring = np.zeros((h, w), bool)
    ring[35:45, 5:20] = True
    img[ring] = (0, 0, 255)  # uncompressed RLE object
    (tmp_path / "images").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    anns = {
        "images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "ball"}, {"id": 3, "name": "mat"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "area": 231,
                "iscrowd": 0,
                "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]],
                "bbox": [10, 10, 20, 10],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "area": float(disk.sum()),
                "iscrowd": 0,
                "segmentation": {"size": [h, w], "counts": _rle_string(_rle_counts(disk))},
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 3,
                "area": float(ring.sum()),
                "iscrowd": 1,
                "segmentation": {"size": [h, w], "counts": _rle_counts(ring)},
            },
            {"id": 13, "image_id": 1, "category_id": 1, "area": 4, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2]]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(anns))
    return path, tmp_path / "images", {"box": img[10:21, 10:31], "disk": disk, "ring": ring}


def test_coco_source_cuts_polygon_and_rle_objects(coco) -> None:
    ann, root, truth = coco
    src = CocoObjectSource(ann, root, min_area=50, feather=0, padding=0)
    assert len(src) == 2  # crowd and tiny annotations are filtered out
    box = src.get(0)
    assert box.name == "box" and box.rgb.shape == (11, 21, 3)
    np.testing.assert_array_equal(box.rgb, truth["box"])
    assert (box.alpha == 255).all()
    ball = src.get(1)
    np.testing.assert_array_equal(ball.alpha > 0, truth["disk"][22:39, 37:54])
    assert (ball.rgb[ball.alpha > 0] == (0, 255, 0)).all()
    # Uncompressed RLE of a crowd region, when crowds are allowed.
    with_crowd = CocoObjectSource(ann, root, categories=["mat"], min_area=50, include_crowd=True, feather=0, padding=0)
    mat = with_crowd.sample(np.random.default_rng(0))
    assert mat.name == "mat" and mat.rgb.shape == (10, 15, 3) and (mat.alpha == 255).all()
    assert (
        CocoObjectSource(ann, root, exclude_categories=["box"], min_area=50).sample(np.random.default_rng(0)).name
        == "ball"
    )


def test_coco_source_errors(coco, tmp_path: Path) -> None:
    ann, root, _ = coco
    with pytest.raises(ValueError, match="unicorn"):
        CocoObjectSource(ann, root, categories=["unicorn"])
    with pytest.raises(ValueError, match="no annotation"):
        CocoObjectSource(ann, root, min_area=1e9)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoObjectSource(tmp_path / "missing.json", root)
    with pytest.raises(FileNotFoundError, match="a.png"):
        CocoObjectSource(ann, tmp_path / "elsewhere", min_area=50).get(0)


def test_bank_source_pickles_without_the_open_bank(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path)
    src = BankSource(tmp_path)
    assert src.sample(np.random.default_rng(0)) is None  # empty bank
    fill_bank(ProceduralObjectSource(size_range=(8, 16)), bank, 5, seed=3)
    assert len(src) == 0 and src.refresh() == 5
    clone = pickle.loads(pickle.dumps(src))
    assert clone._bank is None and clone._keys == src._keys
    a, b = src.sample(np.random.default_rng(1)), clone.sample(np.random.default_rng(1))
    np.testing.assert_array_equal(a.rgb, b.rgb)
    bank.add(OutlierEntry(rgb=np.zeros((4, 4, 3), np.uint8), alpha=np.ones((4, 4)), kind="frame"), key="frame0")
    assert src.refresh() == 6
    frames = BankSource(tmp_path, kinds=("frame",))
    assert frames.sample(np.random.default_rng(0)).kind == "frame"


def test_fill_bank_is_resumable(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path)
    src = ProceduralObjectSource(size_range=(8, 16))
    keys = fill_bank(src, bank, 6, seed=1).keys
    mtimes = {k: bank.path(k).stat().st_mtime_ns for k in keys}
    bank.path(keys[2]).unlink()  # an item lost in a crash
    again = fill_bank(src, bank, 6, seed=1)
    assert again.keys == keys and (again.produced, again.skipped, again.failed) == (1, 5, 0)
    assert all(bank.path(k).stat().st_mtime_ns == mtimes[k] for k in keys if k != keys[2])
    assert bank.get(keys[2]).metadata["slot"] == 2 and bank.get(keys[2]).seed == 1


class _Flaky:
    """A producer that fails on every third call."""

    def __init__(self) -> None:
        self.calls = 0
        self.inner = ProceduralObjectSource(size_range=(8, 16))

    def sample(self, rng: np.random.Generator) -> OutlierEntry:
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("GPU out of memory (simulated by the producer)")
        return self.inner.sample(rng)


def test_fill_bank_counts_and_names_failures(tmp_path: Path) -> None:
    reports: list[dict] = []
    st = fill_bank(_Flaky(), tmp_path, 9, seed=0, namespace="t", report=reports.append)
    assert (st.produced, st.failed, st.fatal) == (6, 3, None)
    assert "out of memory" in st.errors[-1] and reports[-1]["produced"] == 6 and reports[-1]["keys"] == 6
    assert st.failed_items == [f"t#{i}: RuntimeError: GPU out of memory (simulated by the producer)" for i in (2, 5, 8)]
    assert len(OutlierBank(tmp_path)) == 6
    spec = ProducerSpec("synthrel_lightning.synthesis.sources.ProceduralObjectSource", {"size_range": (8, 16)})
    st = fill_bank(spec, tmp_path, 9, seed=0, namespace="t")
    assert (st.produced, st.skipped) == (3, 6) and len(st.keys) == 9
    bad = fill_bank(ProducerSpec("no.such.Producer"), tmp_path, 2, seed=0, namespace="t2")
    assert bad.produced == 0 and "no.such.Producer" in bad.fatal


class _Empty:
    """A source with nothing to serve."""

    def sample(self, rng: np.random.Generator) -> None:
        return None


def test_fill_bank_stops_after_consecutive_failures(tmp_path: Path) -> None:
    st = fill_bank(_Empty(), tmp_path, 10, max_consecutive_failures=3)
    assert st.failed == 3 and st.produced == 0 and "3 consecutive failures" in st.fatal
    assert "returned no outlier" in st.failed_items[0]


def test_producer_spec_builds_nested_objects(tmp_path: Path) -> None:
    """A producer receives objects (e.g. datasets) as nested class_path mappings, built in its process."""
    spec = ProducerSpec(
        "synthrel_lightning.synthesis.sources.BankSource",
        {"bank": {"class_path": "synthrel_lightning.synthesis.bank.OutlierBank", "init_args": {"root": str(tmp_path)}}},
    )
    fill_bank(ProceduralObjectSource(size_range=(8, 16)), OutlierBank(tmp_path), 2, seed=0)
    src = spec.build()
    assert isinstance(src, BankSource) and src.root == tmp_path and len(src) == 2


def test_coco_source_missing_image_opt_in_skip(coco, tmp_path: Path) -> None:
    ann, root, _ = coco
    data = json.loads(Path(ann).read_text())
    # A second image named by the annotation file but absent from the image folder.
    data["images"].append({"id": 2, "file_name": "b.png", "height": 60, "width": 40})
    data["annotations"].append(dict(data["annotations"][0], id=20, image_id=2))
    ann2 = tmp_path / "instances_missing.json"
    ann2.write_text(json.dumps(data))
    # Default: drawing it is an error naming the file and the way out.
    strict = CocoObjectSource(ann2, root, min_area=50)
    assert len(strict) == 3
    with pytest.raises(FileNotFoundError, match=r"b\.png.*on_missing='skip'"):
        strict.get([a["id"] for a in strict.annotations].index(20))
    lenient = CocoObjectSource(ann2, root, min_area=50, on_missing="skip")
    assert lenient.missing_images == ["b.png"] and len(lenient) == 2
    assert 20 not in [a["id"] for a in lenient.annotations]
    report = fill_bank(lenient, OutlierBank(tmp_path / "bank"), 6, seed=0)
    assert report.produced == 6 and report.failed == 0
    with pytest.raises(ValueError, match="on_missing"):
        CocoObjectSource(ann2, root, on_missing="ignore")


@pytest.mark.slow
def test_inpainting_source_fills_a_bank_with_the_tiny_pipeline(tmp_path: Path, cityscapes_mini: Path) -> None:
    from synthrel_lightning.data.cityscapes import CityscapesDataset
    from synthrel_lightning.synthesis.placement import PlacementSampler
    from synthrel_lightning.synthesis.sources import InpaintingSource
    from synthrel_lightning.testing import save_tiny_pipeline

    save_tiny_pipeline(tmp_path / "tiny")
    src = InpaintingSource(
        frames=CityscapesDataset(cityscapes_mini, split="val"),
        engine={
            "model_id": str(tmp_path / "tiny"),
            "dtype": "float32",
            "num_inference_steps": 2,
            "resolution": 64,
            "device": "cpu",
        },
        placement=PlacementSampler(size_range=(32, 64), reference_width=256),
        vocabulary=["zebra"],
    )
    bank = OutlierBank(tmp_path / "bank")
    keys = fill_bank(src, bank, 2, seed=0).keys
    assert len(keys) == 2 and bank.verify() == []
    e = bank.get(keys[0])
    assert e.name == "zebra" and e.prompt == "A photo of a zebra" and e.metadata["frame"] == "frankfurt_000000_000294"
    assert e.rgb.shape[:2] == e.alpha.shape and 32 <= e.rgb.shape[0] <= 64


def test_bank_source_cache_serves_the_same_draws_and_still_skips_corrupt_entries(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path)
    keys = fill_bank(ProceduralObjectSource(size_range=(8, 16)), bank, 6, seed=2).keys
    cached, uncached = BankSource(tmp_path, cache_size=4), BankSource(tmp_path, cache_size=0)
    for seed in range(30):  # more draws than the cache holds: eviction is exercised
        a, b = cached.sample(np.random.default_rng(seed)), uncached.sample(np.random.default_rng(seed))
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.alpha, b.alpha)
    assert len(cached._cache) == 4
    # A damaged entry that is not cached is skipped and counted, not served.
    fresh = BankSource(tmp_path, cache_size=4)
    fresh.refresh()
    bad = bank.path(keys[0])
    bad.write_bytes(bad.read_bytes()[:50])
    fresh._keys = [keys[0]]
    assert fresh.sample(np.random.default_rng(0)) is None
    assert fresh.corrupt_skipped >= 1
    with pytest.raises(ValueError, match="cache_size"):
        BankSource(tmp_path, cache_size=-1)


def test_coco_source_skips_unreadable_images_too(coco, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging

    from synthrel_lightning.synthesis.mixing import OutlierMixer

    ann, root, _ = coco
    data = json.loads(Path(ann).read_text())
    # A second image that exists but cannot be decoded (a damaged download).
    data["images"].append({"id": 2, "file_name": "broken.png", "height": 60, "width": 40})
    data["annotations"].extend(dict(data["annotations"][0], id=20 + k, image_id=2) for k in range(4))
    (Path(root) / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 20)
    ann2 = tmp_path / "instances_broken.json"
    ann2.write_text(json.dumps(data))
    strict = CocoObjectSource(ann2, root, min_area=50)
    with pytest.raises(ValueError, match=r"broken\.png.*on_missing='skip'"):
        strict.get([a["id"] for a in strict.annotations].index(20))
    lenient = CocoObjectSource(ann2, root, min_area=50, on_missing="skip")
    with caplog.at_level(logging.WARNING):
        rng = np.random.default_rng(0)
        drawn = [lenient.sample(rng) for _ in range(30)]
    assert all("broken.png" not in e.source for e in drawn)
    assert lenient.unreadable_images == ["broken.png"]
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1  # warned once, naming the file
    mixer = OutlierMixer(lenient, probability=1.0, seed=0)
    frame = {"image": np.zeros((64, 96, 3), np.uint8), "label": np.zeros((64, 96), np.uint8), "name": "f"}
    for i in range(30):
        mixer(dict(frame), i)
    fresh = CocoObjectSource(ann2, root, min_area=50, on_missing="skip")
    report = fill_bank(fresh, OutlierBank(tmp_path / "bank"), 10, seed=0)
    assert report.produced == 10 and report.failed == 0 and fresh.unreadable_images == ["broken.png"]
