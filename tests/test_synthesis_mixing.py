"""OutlierMixer in the keyed view: labels where objects are pasted, determinism across workers and epochs."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.data.keyed import KeyedDataset
from synthrel_lightning.labels import OOD_ID
from synthrel_lightning.synthesis.bank import OutlierBank, OutlierEntry
from synthrel_lightning.synthesis.mixing import OutlierMixer, paste_object
from synthrel_lightning.synthesis.placement import PlacementSampler
from synthrel_lightning.synthesis.sources import BankSource, ProceduralObjectSource, fill_bank


class Frames(Dataset):
    """Raw street-like samples: road at the bottom, building above, a void band at the top."""

    def __init__(self, n: int = 8, h: int = 64, w: int = 128) -> None:
        self.n, self.h, self.w = n, h, w

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(1000 + i)
        label = np.full((self.h, self.w), 2, np.uint8)
        label[self.h // 2 :] = 0
        label[: self.h // 8] = 255
        ood = np.where(label == 255, 255, 0).astype(np.uint8)
        return {
            "image": rng.integers(0, 256, (self.h, self.w, 3), dtype=np.uint8),
            "label": label,
            "ood": ood,
            "name": f"f{i}",
        }


class Square:
    """An opaque square outlier (hard edges make pasted pixels exactly countable)."""

    def __init__(self, label_value: int = 254, size: int = 16) -> None:
        self.label_value, self.size = label_value, size

    def sample(self, rng: np.random.Generator) -> OutlierEntry:
        c = rng.integers(0, 256, 3, dtype=np.uint8)
        return OutlierEntry(
            rgb=np.broadcast_to(c, (self.size, self.size, 3)).copy(),
            alpha=np.full((self.size, self.size), 255, np.uint8),
            label_value=self.label_value,
        )


@pytest.fixture()
def bank_root(tmp_path: Path) -> Path:
    fill_bank(ProceduralObjectSource(size_range=(12, 32)), OutlierBank(tmp_path / "bank"), 12, seed=0)
    return tmp_path / "bank"


def test_paste_object_blends_and_labels_exactly() -> None:
    image = np.full((10, 12, 3), 100, np.uint8)
    label = np.full((10, 12), 255, np.uint8)
    label[:, 6:] = 0
    ood = np.where(label == 255, 255, 0).astype(np.uint8)
    alpha = np.array([[0, 128, 255], [255, 255, 0]], np.uint8)
    entry = OutlierEntry(rgb=np.full((2, 3, 3), 200, np.uint8), alpha=alpha)
    hard = paste_object(image, label, ood, entry, x0=5, y0=4, width=3, height=2)
    np.testing.assert_array_equal(image[4:6, 5:8, 0], [[100, 150, 200], [200, 200, 100]])
    np.testing.assert_array_equal(hard, alpha > 127)
    np.testing.assert_array_equal(label[4:6, 5:8], [[255, 254, 254], [254, 254, 0]])
    np.testing.assert_array_equal(ood[4:6, 5:8], [[255, 1, 1], [1, 1, 0]])
    assert (label == 254).sum() == 4 and (image != 100).any(axis=2).sum() == 4
    with pytest.raises(ValueError, match="does not fit"):
        paste_object(image, label, ood, entry, x0=11, y0=0, width=3, height=2)


def test_ood_label_only_where_pasted_and_void_kept(bank_root: Path) -> None:
    frames = Frames()
    mixer = OutlierMixer(BankSource(bank_root), probability=1.0, num_objects=(2, 3), size_range=(0.1, 0.3))
    for i in range(len(frames)):
        raw = frames[i]
        out = mixer(raw, index=i, epoch=0)
        changed = out["label"] != raw["label"]
        assert changed.any()
        assert (out["label"][changed] == 254).all()
        np.testing.assert_array_equal(out["label"] == 254, out["ood"] == 1)
        untouched_void = (raw["label"] == 255) & ~changed
        assert (out["label"][untouched_void] == 255).all() and (out["ood"][untouched_void] == 255).all()
        assert ((out["ood"] == 0) == ((out["label"] != 254) & (out["label"] != 255))).all()
        # The image changed only around pasted objects, and the input was not modified.
        np.testing.assert_array_equal(raw["image"], frames[i]["image"])
        img_changed = (out["image"] != raw["image"]).any(axis=2)
        assert img_changed[changed].mean() > 0.9
        assert out["name"] == raw["name"]


def test_in_distribution_controls_keep_ood_negative() -> None:
    frames = Frames()
    out = OutlierMixer(Square(label_value=13), probability=1.0, num_objects=(1, 1), size_range=(0.2, 0.2))(frames[0], 0)
    pasted = out["label"] != frames[0]["label"]
    assert pasted.sum() > 0 and (out["label"][pasted] == 13).all()
    assert (out["ood"][out["label"] == 13] == 0).all() and not (out["ood"] == 1).any()


def test_probability_is_honoured() -> None:
    frames = Frames(n=1, h=16, w=32)
    mixer = OutlierMixer(Square(size=8), probability=0.3, num_objects=(1, 1), size_range=(0.25, 0.25))
    mixed = [bool((mixer(frames[0], index=i)["label"] == 254).any()) for i in range(600)]
    assert abs(np.mean(mixed) - 0.3) < 0.06  # 3.2 binomial standard deviations
    assert not any((OutlierMixer(Square(), probability=0.0)(frames[0], i)["label"] == 254).any() for i in range(50))


def test_placement_puts_objects_on_the_road() -> None:
    frames = Frames(h=128, w=256)
    sampler = PlacementSampler(size_range=(256, 512), min_overlap=0.5, fallback="none")
    mixer = OutlierMixer(Square(size=32), probability=1.0, num_objects=(1, 1), placement=sampler)
    for i in range(20):
        out = mixer(frames[i % len(frames)], index=i)
        ys, _ = np.nonzero(out["label"] == 254)
        assert ys.size > 0 and ys.min() >= 128 // 4
        # Bottom-aligned in a box overlapping the road (the lower half) by >= 50%.
        assert ys.max() >= 64
    assert sampler.stats["drivable"] == 20


def _as_arrays(batch: dict) -> tuple:
    return batch["image"].numpy(), batch["label"].numpy(), batch["ood"].numpy()


def test_determinism_across_workers_and_epochs(bank_root: Path) -> None:
    mixer = OutlierMixer(BankSource(bank_root), probability=0.7, seed=3)
    ds = KeyedDataset(Frames(n=6), mixer=mixer)
    ds.set_epoch(1)
    serial = [_as_arrays(b) for b in DataLoader(ds, batch_size=2, num_workers=0)]
    parallel = [_as_arrays(b) for b in DataLoader(ds, batch_size=2, num_workers=2)]
    for a, b in zip(serial, parallel, strict=True):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    ds.set_epoch(2)
    other = [_as_arrays(b) for b in DataLoader(ds, batch_size=2, num_workers=0)]
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(serial, other))
    ds.set_epoch(1)  # a resumed run at epoch 1 sees the same data
    again = [_as_arrays(b) for b in DataLoader(ds, batch_size=2, num_workers=0)]
    for a, b in zip(serial, again):
        np.testing.assert_array_equal(a[1], b[1])


def test_set_epoch_picks_up_new_bank_entries(tmp_path: Path) -> None:
    bank = OutlierBank(tmp_path)
    fill_bank(Square(), bank, 2, seed=0)
    source = BankSource(tmp_path)
    ds = KeyedDataset(Frames(n=2), mixer=OutlierMixer(source, probability=1.0))
    ds.set_epoch(0)
    assert len(source) == 2
    fill_bank(Square(), bank, 5, seed=1)
    ds.set_epoch(1)
    assert len(source) == 7 and ds.epoch == 1


def test_transform_moves_ood_mask_with_the_image(bank_root: Path) -> None:
    from synthrel_lightning.data.transforms import SegmentationTransform

    transform = SegmentationTransform([A.HorizontalFlip(p=1.0), A.RandomCrop(48, 96)], normalize=False, seed=0)
    ds = KeyedDataset(
        Frames(n=4), transform=transform, mixer=OutlierMixer(Square(size=24), probability=1.0, num_objects=(1, 1))
    )
    for i in range(4):
        s = ds[i]
        assert s["image"].shape == (3, 48, 96) and s["label"].dtype == torch.int64
        assert torch.equal(s["label"] == 254, s["ood"] == 1)


def test_replace_mode_with_frames_dataset_and_bank_frames(tmp_path: Path) -> None:
    synthetic = Frames(n=3, h=32, w=64)
    mixer = OutlierMixer(None, probability=1.0, mode="replace", frames=synthetic)
    out = mixer(Frames()[0], index=5)
    assert out["image"].shape == (32, 64, 3) and out["name"] in {"f0", "f1", "f2"}
    np.testing.assert_array_equal(out["image"], synthetic[int(out["name"][1:])]["image"])

    bank = OutlierBank(tmp_path)
    rgb = np.full((32, 64, 3), 7, np.uint8)
    alpha = np.zeros((32, 64), np.uint8)
    alpha[10:20, 20:30] = 255
    scene = np.zeros((32, 64), np.uint8)
    bank.add(OutlierEntry(rgb=rgb, alpha=alpha, kind="frame", label=scene, source="frame_a"), key="a")
    bank.add(OutlierEntry(rgb=rgb, alpha=alpha, kind="frame", source="frame_b"), key="b")
    bank.add(OutlierEntry(rgb=rgb[:8, :8], alpha=alpha[:8, :8]), key="obj")
    mixer = OutlierMixer(BankSource(tmp_path, kinds=("frame",)), probability=1.0, mode="replace")
    seen = set()
    for i in range(12):
        out = mixer(Frames()[0], index=i)
        assert (out["label"][10:20, 20:30] == 254).all() and (out["ood"][10:20, 20:30] == 1).all()
        rest = np.ones((32, 64), bool)
        rest[10:20, 20:30] = False
        if out["name"].endswith("frame_a"):
            assert (out["label"][rest] == 0).all() and (out["ood"][rest] == 0).all()
        else:  # no scene label stored: only the object is labelled
            assert (out["label"][rest] == 255).all() and (out["ood"][rest] == 255).all()
        seen.add(out["name"])
    assert len(seen) == 2
    with pytest.raises(ValueError, match="whole synthetic frames"):
        OutlierMixer(Square(), probability=1.0, mode="replace")(Frames()[0], 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(probability=1.5), "probability"),
        (dict(size_range=(0.0, 0.2)), "fraction"),
        (dict(mode="blend"), "mode"),
        (dict(num_objects=(3, 1)), "num_objects"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OutlierMixer(Square(), **kwargs)


def test_paste_blend_is_exact_for_every_alpha_and_colour() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    before = image.copy()
    rgb = rng.integers(0, 256, (31, 23, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (31, 23), dtype=np.uint8)
    alpha[0, :3] = (0, 255, 128)
    label, ood = np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)
    paste_object(image, label, ood, OutlierEntry(rgb=rgb, alpha=alpha), x0=7, y0=5, width=23, height=31)
    a = alpha.astype(np.int64)[..., None]
    expected = (rgb.astype(np.int64) * a + before[5:36, 7:30].astype(np.int64) * (255 - a) + 127) // 255
    np.testing.assert_array_equal(image[5:36, 7:30], expected)
    outside = np.ones((40, 50), bool)
    outside[5:36, 7:30] = False
    np.testing.assert_array_equal(image[outside], before[outside])


@pytest.mark.parametrize("size", [(5, 4), (20, 50)], ids=["shrink", "enlarge"])
def test_resized_paste_covers_exactly_its_box(size: tuple[int, int]) -> None:
    image = np.full((60, 80, 3), 10, np.uint8)
    label, ood = np.zeros((60, 80), np.uint8), np.zeros((60, 80), np.uint8)
    entry = OutlierEntry(rgb=np.full((8, 12, 3), 220, np.uint8), alpha=np.full((8, 12), 255, np.uint8))
    h, w = size
    hard = paste_object(image, label, ood, entry, x0=3, y0=2, width=w, height=h)
    assert hard.shape == (h, w) and hard.all()
    assert (image[2 : 2 + h, 3 : 3 + w] == 220).all() and (image == 220).all(axis=2).sum() == h * w
    assert (label == OOD_ID).sum() == h * w and (ood == 1).sum() == h * w


@pytest.mark.parametrize("margins", [(3, 0, 5, 2), (0, 0, 0, 0), None], ids=["zero-margins", "no-margins", "all-zero"])
def test_paste_blends_only_where_alpha_is_positive_exactly(margins: tuple[int, int, int, int] | None) -> None:
    """Objects with transparent margins (or fully transparent) give the exact blend everywhere in their box."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    before = image.copy()
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    alpha = np.zeros((20, 24), np.uint8)
    if margins is not None:
        top, bottom, left, right = margins
        alpha[top : 20 - bottom, left : 24 - right] = rng.integers(1, 256, (20 - top - bottom, 24 - left - right))
    label, ood = np.zeros((30, 40), np.uint8), np.zeros((30, 40), np.uint8)
    hard = paste_object(image, label, ood, OutlierEntry(rgb=rgb, alpha=alpha), x0=9, y0=4, width=24, height=20)
    a = alpha.astype(np.int64)[..., None]
    expected = before.copy()
    expected[4:24, 9:33] = (rgb.astype(np.int64) * a + before[4:24, 9:33].astype(np.int64) * (255 - a) + 127) // 255
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(hard, alpha > 127)
    assert (label == OOD_ID).sum() == hard.sum()


def test_mixer_leaves_a_reused_sample_untouched(bank_root: Path) -> None:
    """Datasets may hand out the same arrays again (in-memory or cached frames): mixing must copy."""
    frame = Frames(1, 64, 128)[0]
    kept = {k: v.copy() for k, v in frame.items() if isinstance(v, np.ndarray)}
    mixer = OutlierMixer(BankSource(bank_root), probability=1.0, num_objects=(3, 3))
    first = mixer(frame, index=0)
    assert (first["image"] != kept["image"]).any() and (first["label"] == OOD_ID).any()
    for k, v in kept.items():
        np.testing.assert_array_equal(frame[k], v)
    again = mixer(frame, index=0)
    for k in ("image", "label", "ood"):
        np.testing.assert_array_equal(again[k], first[k])


@pytest.mark.parametrize("placed", [False, True], ids=["uniform", "placement"])
def test_pasting_into_fresh_arrays_gives_the_same_sample(bank_root: Path, placed: bool) -> None:
    """copy_input=False (datasets that decode fresh arrays) = the default's result, written into the input."""
    frames = Frames(6, 128, 256)

    def mixer(copy_input: bool) -> OutlierMixer:
        sampler = PlacementSampler(size_range=(24, 64), min_overlap=0.5) if placed else None
        return OutlierMixer(
            BankSource(bank_root), probability=1.0, num_objects=(3, 3), placement=sampler, copy_input=copy_input
        )

    copying, in_place = mixer(True), mixer(False)
    for i in range(6):
        expected = copying(frames[i], index=i)
        fresh = frames[i]
        got = in_place(fresh, index=i)
        for k in ("image", "label", "ood"):
            np.testing.assert_array_equal(got[k], expected[k])
            assert got[k] is fresh[k]  # no copy made
    # Read-only arrays (e.g. memory-mapped frames) are still copied, never written.
    frozen = frames[0]
    for k in ("image", "label", "ood"):
        frozen[k].flags.writeable = False
    kept = frozen["image"].copy()
    got = in_place(frozen, index=0)
    np.testing.assert_array_equal(frozen["image"], kept)
    np.testing.assert_array_equal(got["image"], copying(frames[0], index=0)["image"])
