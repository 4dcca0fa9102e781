"""Albumentations transforms: alignment of image/label/ood, void padding, dtype contract, pickling, workers."""

from __future__ import annotations

import pickle
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from synthrel_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FastColorJitter,
    SegmentationTransform,
    adjust_saturation,
    denormalize,
    eval_transform,
    train_transform,
)

H, W = 60, 200


def _coordinate_sample(h: int = H, w: int = W) -> dict[str, Any]:
    """label = column, ood = row, image R = column, G = row: any misalignment shows."""
    cols = np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :], (h, w))
    rows = np.broadcast_to(np.arange(h, dtype=np.uint8)[:, None], (h, w))
    image = np.stack([cols, rows, np.full((h, w), 128, np.uint8)], axis=2)
    return {"image": image.copy(), "label": cols.copy(), "ood": rows.copy(), "name": "coords"}


def _check_aligned(out: dict[str, Any], tol: float) -> None:
    label, ood = out["label"].numpy(), out["ood"].numpy()
    rgb = denormalize(out["image"]).astype(np.int64)
    valid = label != 255
    assert ((label == 255) == (ood == 255)).all(), "label and ood padded differently"
    # Nearest-resized masks: each output column comes from one source column, each row from one row.
    for c in range(label.shape[1]):
        col = label[valid[:, c], c]
        assert col.size == 0 or (col == col[0]).all()
    for r in range(ood.shape[0]):
        row = ood[r, valid[r]]
        assert row.size == 0 or (row == row[0]).all()
    # The image was moved exactly like the masks (linear vs nearest sampling: within ~1 source pixel).
    assert np.abs(rgb[..., 0][valid] - label[valid]).max() <= tol
    assert np.abs(rgb[..., 1][valid] - ood[valid]).max() <= tol


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_alignment_and_contract(seed: int) -> None:
    t = train_transform(crop_size=(48, 96), scale_range=(0.5, 2.0), hflip=0.5, color_jitter=0.0, seed=seed)
    torch.manual_seed(seed)
    out = t(_coordinate_sample())
    assert out["image"].shape == (3, 48, 96) and out["image"].dtype == torch.float32
    assert out["label"].shape == (48, 96) and out["label"].dtype == torch.int64
    assert out["ood"].shape == (48, 96) and out["ood"].dtype == torch.int64
    assert out["name"] == "coords"
    _check_aligned(out, tol=2)


def test_flip_is_applied_to_every_target() -> None:
    t = train_transform(crop_size=(H, W), scale_range=(1.0, 1.0), hflip=1.0, color_jitter=0.0)
    sample = _coordinate_sample()
    out = t(sample)
    np.testing.assert_array_equal(out["label"].numpy(), sample["label"][:, ::-1])
    np.testing.assert_array_equal(out["ood"].numpy(), sample["ood"][:, ::-1])
    np.testing.assert_array_equal(denormalize(out["image"]), sample["image"][:, ::-1])


def test_padding_is_void_in_both_masks_and_zero_in_the_image() -> None:
    t = train_transform(crop_size=(96, 320), scale_range=(0.5, 1.0), hflip=0.5, color_jitter=0.0, seed=3)
    out = t(_coordinate_sample())
    label, ood, image = out["label"].numpy(), out["ood"].numpy(), out["image"].numpy()
    pad = label == 255
    assert pad.sum() >= 96 * 320 - H * W  # the scaled image is smaller than the crop
    assert (ood[pad] == 255).all() and (ood[~pad] != 255).all()
    # Padded with the mean colour, so the normalised image is ~0 there.
    assert np.abs(image[:, pad]).max() < 0.01
    _check_aligned(out, tol=2)


def test_nearest_mask_resizing_creates_no_new_values() -> None:
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 7, 13, 254], np.uint8), size=(H, W))
    ood = (label == 254).astype(np.uint8)
    sample = {"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "label": label, "ood": ood, "name": "x"}
    for t in (train_transform(crop_size=(40, 40), seed=1), eval_transform(size=(37, 111))):
        out = t(sample)
        assert set(torch.unique(out["label"]).tolist()) <= {0, 7, 13, 254, 255}
        assert set(torch.unique(out["ood"]).tolist()) <= {0, 1, 255}
        assert ((out["label"] == 254) == (out["ood"] == 1)).all()


def test_eval_transform_normalises_and_resizes() -> None:
    sample = _coordinate_sample()
    out = eval_transform()(sample)
    np.testing.assert_array_equal(denormalize(out["image"]), sample["image"])
    np.testing.assert_array_equal(out["label"].numpy(), sample["label"])
    mean_img = np.broadcast_to(np.array([round(m * 255) for m in IMAGENET_MEAN], np.uint8), (4, 5, 3)).copy()
    z = eval_transform()({"image": mean_img})["image"]
    assert z.abs().max() < 0.01
    red = eval_transform()({"image": np.full((2, 2, 3), (255, 0, 0), np.uint8)})["image"]
    assert red[0, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=1e-5)
    small = eval_transform(size=(30, 100))(sample)
    assert small["image"].shape == (3, 30, 100) and small["label"].shape == (30, 100)
    _check_aligned(small, tol=2)


def test_denormalize_batches_and_rejects_bad_shapes() -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (2, 8, 9, 3), dtype=np.uint8)
    t = eval_transform()
    batch = torch.stack([t({"image": im})["image"] for im in imgs])
    np.testing.assert_array_equal(denormalize(batch), imgs)
    with pytest.raises(ValueError, match=r"expected a \(3,H,W\)"):
        denormalize(torch.zeros(4, 8, 8))


def test_user_pipelines_list_and_compose() -> None:
    sample = _coordinate_sample()
    listed = SegmentationTransform([A.VerticalFlip(p=1.0)])
    out = listed(sample)
    np.testing.assert_array_equal(out["ood"].numpy(), sample["ood"][::-1])
    np.testing.assert_array_equal(out["label"].numpy(), sample["label"][::-1])
    # A user Compose without the 'ood' target still moves ood with the label.
    composed = SegmentationTransform(A.Compose([A.HorizontalFlip(p=1.0), A.Resize(30, 100)]))
    out = composed(sample)
    assert out["ood"].shape == (30, 100)
    _check_aligned(out, tol=2)
    assert out["label"][0, 0].item() > out["label"][0, -1].item()
    # A linear mask interpolation requested by the user is overridden: masks must stay nearest.
    forced = SegmentationTransform([A.Resize(37, 111, mask_interpolation=1)])
    lab = np.where(np.arange(W) < W // 2, 0, 13).astype(np.uint8)[None].repeat(H, 0)
    got = forced({"image": sample["image"], "label": lab})["label"]
    assert set(torch.unique(got).tolist()) == {0, 13}


def test_user_pipeline_errors() -> None:
    with pytest.raises(ValueError, match="already contains Normalize"):
        SegmentationTransform([A.Normalize()])
    assert (
        SegmentationTransform([A.Normalize()], normalize=False)({"image": np.zeros((4, 4, 3), np.uint8)})["image"].dtype
        == torch.float32
    )
    with pytest.raises(TypeError, match=r"transforms\[0\] is function"):
        SegmentationTransform([lambda s: s])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="crop_size must be positive"):
        train_transform(crop_size=(0, 10))
    with pytest.raises(ValueError, match="scale_range"):
        train_transform(scale_range=(2.0, 1.0))
    with pytest.raises(KeyError, match="no 'image'"):
        eval_transform()({"label": np.zeros((2, 2), np.uint8)})


def test_pickled_transform_reproduces_itself() -> None:
    t = train_transform(crop_size=(32, 64), seed=5)
    clone = pickle.loads(pickle.dumps(t))
    sample = _coordinate_sample()
    torch.manual_seed(0)
    a = [t(sample)["label"] for _ in range(3)]
    torch.manual_seed(0)
    b = [clone(sample)["label"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(a[0], x) for x in a[1:])  # the stream moves on between calls


class _Repeated(Dataset[dict[str, Any]]):
    def __init__(self, n: int, transform: SegmentationTransform) -> None:
        self.n, self.transform = n, transform
        self.sample = _coordinate_sample()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.transform(self.sample)


def _worker_outputs(seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    ds = _Repeated(8, train_transform(crop_size=(16, 32), color_jitter=0.0))
    loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context="fork")
    return [b["label"][0] for b in loader]


def test_workers_get_distinct_reproducible_streams() -> None:
    first = _worker_outputs(0)
    # Items 2k and 2k+1 go to worker 0 and worker 1: a copied random state would make them equal.
    assert sum(torch.equal(first[2 * k], first[2 * k + 1]) for k in range(4)) < 2
    again = _worker_outputs(0)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    other = _worker_outputs(1)
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


def test_user_pipeline_from_yaml() -> None:
    from jsonargparse import ArgumentParser

    yaml = """
transform:
  class_path: synthrel_lightning.data.transforms.SegmentationTransform
  init_args:
    transforms:
      - class_path: albumentations.HorizontalFlip
        init_args: {p: 1.0}
      - class_path: albumentations.RandomCrop
        init_args: {height: 80, width: 80, pad_if_needed: true, fill_mask: 255}
"""
    parser = ArgumentParser()
    parser.add_argument("--transform", type=SegmentationTransform)
    cfg = parser.parse_string(yaml)
    init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    t = init.transform
    assert isinstance(t, SegmentationTransform)
    out = t(_coordinate_sample())
    assert out["label"].shape == (80, 80) and out["image"].dtype == torch.float32
    assert ((out["label"] == 255) == (out["ood"] == 255)).all() and (out["ood"] == 255).sum() == 20 * 80
    _check_aligned(out, tol=0)


def _scaled_padded_crop(array, scaled, crop, pad, start, fill, nearest):
    """Reference: resize the whole frame with OpenCV, pad it, then crop (what scale -> pad -> crop computes)."""
    import cv2

    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    resized = cv2.resize(array, (scaled[1], scaled[0]), interpolation=interp).reshape(*scaled, *array.shape[2:])
    ph, pw = max(scaled[0], crop[0]), max(scaled[1], crop[1])
    padded = np.empty((ph, pw, *array.shape[2:]), array.dtype)
    padded[...] = fill
    padded[pad[0] : pad[0] + scaled[0], pad[1] : pad[1] + scaled[1]] = resized
    return padded[start[0] : start[0] + crop[0], start[1] : start[1] + crop[1]]


def test_scale_crop_window_equals_scaling_the_whole_frame_then_cropping() -> None:
    import cv2

    from synthrel_lightning.data.transforms import scale_crop

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(3, 300, 2))
        s = float(rng.uniform(0.3, 3.0))
        scaled = (max(1, int(h * s)), max(1, int(w * s)))
        crop = (int(rng.integers(1, 100)), int(rng.integers(1, 100)))
        ph, pw = max(scaled[0], crop[0]), max(scaled[1], crop[1])
        pad = ((ph - scaled[0]) // 2, (pw - scaled[1]) // 2)
        start = (int(rng.integers(0, ph - crop[0] + 1)), int(rng.integers(0, pw - crop[1] + 1)))
        mask = rng.integers(0, 19, (h, w), dtype=np.uint8)
        np.testing.assert_array_equal(
            scale_crop(mask, scaled, crop, pad, start, 255, nearest=True),
            _scaled_padded_crop(mask, scaled, crop, pad, start, 255, nearest=True),
        )
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (3, 3), 0)
        fast = scale_crop(image, scaled, crop, pad, start, (1, 2, 3), nearest=False).astype(int)
        ref = _scaled_padded_crop(image, scaled, crop, pad, start, (1, 2, 3), nearest=False).astype(int)
        assert np.abs(fast - ref).max() <= 1  # OpenCV's warp vs resize fixed point


def test_uint8_output_normalised_on_the_device_equals_the_float_output() -> None:
    from synthrel_lightning.data.transforms import normalize_images

    sample = _coordinate_sample()
    sample["image"] = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    as_float = train_transform(crop_size=(48, 96), seed=0)
    as_uint8 = train_transform(crop_size=(48, 96), seed=0, output="uint8")
    for seed in range(4):
        f, u = as_float(sample, seed=seed), as_uint8(sample, seed=seed)
        assert u["image"].dtype == torch.uint8 and u["image"].shape == (3, 48, 96)
        torch.testing.assert_close(normalize_images(u["image"][None])[0], f["image"], atol=1e-5, rtol=0)
        assert torch.equal(u["label"], f["label"]) and torch.equal(u["ood"], f["ood"])
    assert normalize_images(f["image"]) is f["image"]  # float images pass through
    with pytest.raises(ValueError, match="output='uint8' defers normalisation"):
        SegmentationTransform([A.Normalize()], normalize=False, output="uint8")
    with pytest.raises(ValueError, match="output must be 'float' or 'uint8'"):
        SegmentationTransform([], output="half")
    with pytest.raises(ValueError, match=r"expected \(3,H,W\) or \(B,3,H,W\) uint8"):
        normalize_images(torch.zeros(2, 4, 5, 5, dtype=torch.uint8))


def test_normalisation_equals_albumentations_normalize() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
    want = A.Normalize(mean=mean, std=std, max_pixel_value=255.0)(image=image)["image"].transpose(2, 0, 1)
    got = SegmentationTransform([], mean=mean, std=std)({"image": image})["image"]
    assert got.dtype == torch.float32 and got.shape == (3, 33, 47)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    as_float = image.astype(np.float32)  # a pipeline that hands back float pixels in 0..255
    got_float = SegmentationTransform([A.NoOp()], mean=mean, std=std)._image_tensor(as_float)
    np.testing.assert_allclose(got_float.numpy(), want, rtol=0, atol=1e-5)
    restored = pickle.loads(pickle.dumps(SegmentationTransform([], mean=mean, std=std)))
    assert torch.equal(restored({"image": image})["image"], got)


def test_normalize_refuses_a_pipeline_that_already_made_a_tensor() -> None:
    from albumentations.pytorch import ToTensorV2

    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="normalize=True expects an \\(H, W, 3\\) array"):
        SegmentationTransform([ToTensorV2()])({"image": image})
    assert SegmentationTransform([ToTensorV2()], normalize=False)({"image": image})["image"].shape == (3, 8, 8)


def _photo(seed: int, h: int = 96, w: int = 160) -> np.ndarray:
    """Smooth colourful uint8 image, saturated corners included (clipping paths)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (9, 9), 3)
    img[:8, :8] = 255
    img[-8:, -8:] = (255, 0, 0)
    return img


@pytest.mark.parametrize("factor", [0.0, 0.8, 0.93, 1.0, 1.07, 1.2, 1.9])
def test_one_pass_saturation_matches_albumentations_within_one_grey_level(factor: float) -> None:
    img = _photo(int(factor * 100))
    ref = A.augmentations.pixel.functional.adjust_saturation_torchvision(img, factor)
    got = adjust_saturation(img, factor)
    assert got.dtype == np.uint8 and got.shape == img.shape
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    exact = np.clip(factor * img + (1 - factor) * grey[..., None], 0, 255)
    assert np.abs(got - exact).max() < 1  # the exact blend, rounded in OpenCV fixed point
    floats = img.astype(np.float32) / 255  # other dtypes: albumentations' own function
    np.testing.assert_array_equal(
        adjust_saturation(floats, factor),
        A.augmentations.pixel.functional.adjust_saturation_torchvision(floats, factor),
    )


def test_fast_colour_jitter_draws_the_same_transforms_as_albumentations() -> None:
    """Same seed -> same factors and order; images equal up to the saturation step's rounding."""
    kw = dict(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.05, 0.05), p=1.0)
    ref, fast = A.ColorJitter(**kw), FastColorJitter(**kw)
    ref.set_random_seed(7)
    fast.set_random_seed(7)
    img = _photo(1)
    for _ in range(12):
        p_ref, p_fast = ref.get_params(), fast.get_params()
        assert p_ref == p_fast
        a = ref.apply(img, **p_ref).astype(int)
        b = fast.apply(img, **p_fast).astype(int)
        if p_ref["order"][-1] == 2:  # saturation last: nothing amplifies its rounding
            assert np.abs(a - b).max() <= 1
        # Earlier, later steps (contrast up to 1.2x, hue through 8-bit HSV) can carry it a few levels.
        assert np.abs(a - b).max() <= 8 and (np.abs(a - b) > 1).mean() < 0.02
    t = train_transform(crop_size=(32, 64), color_jitter=0.2, color_jitter_p=1.0, seed=0)
    assert any(isinstance(step, FastColorJitter) for step in t.pipeline.transforms)
