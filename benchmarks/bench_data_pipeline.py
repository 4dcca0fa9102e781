"""Per-stage cost of the training data pipeline, with candidate implementations side by side.

Writes Cityscapes-layout frames (2048x1024 PNGs, as ``bench_mixing.py``) and a procedural
outlier bank to a temp dir, then times, in this process, each stage of one training sample
(decode image, decode label, label id -> train id, value check, OOD target, scale + crop,
flip, colour jitter, normalise + to-tensor, bank entry read, outlier mixing and its
sub-steps) for every candidate of that
stage, interleaving candidates round by round so machine load affects all alike; reports
medians and each candidate's speed-up over the first (the reference) of its stage. Ends with
the whole sample: the reference composition (PIL decode, per-pixel NumPy label mapping,
albumentations scale -> pad -> crop, float normalisation) against the library's
``CityscapesDataset`` + ``train_transform`` (float output, uint8 output for normalising on
the device, each also reading frames from a warm ``DecodedCache``).

    python benchmarks/bench_data_pipeline.py [--frames 6] [--rounds 5] [--calls 4] [--stages WORD ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from bench_mixing import cpu_name, format_1_bank, load_average, write_frames  # noqa: E402

from synthrel_lightning.data.cache import DecodedCache  # noqa: E402
from synthrel_lightning.data.cityscapes import CityscapesDataset  # noqa: E402
from synthrel_lightning.data.io import PNG_DECODER, read_image, read_label  # noqa: E402
from synthrel_lightning.data.transforms import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    FastColorJitter,
    RandomScaleCrop,
    SegmentationTransform,
    train_transform,
)
from synthrel_lightning.labels import LABEL_IDS, LABEL_TO_TRAIN_ID, OOD_ID, VOID_ID  # noqa: E402
from synthrel_lightning.synthesis import BankSource, OutlierBank, OutlierMixer, ProceduralObjectSource, fill_bank  # noqa: E402
from synthrel_lightning.synthesis.bank import OutlierEntry  # noqa: E402
from synthrel_lightning.synthesis.mixing import _resized_rgba, paste_object  # noqa: E402

Stage = dict[str, Callable[[int], object]]


def _reference_label(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Label ids -> train ids + OOD target as main did: PIL decode, fancy indexing, bincount, comparisons."""
    ids = np.array(Image.open(path))
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
    assert set(present.tolist()) <= set(LABEL_IDS)
    train = LABEL_TO_TRAIN_ID[ids]
    ood = np.zeros_like(train)
    ood[train == VOID_ID] = VOID_ID
    ood[train == OOD_ID] = 1
    return train, ood


def _reference_paste(image: np.ndarray, entry: OutlierEntry, x0: int, y0: int, width: int, height: int) -> None:
    """Main's paste: PIL bilinear resize of RGB and alpha, then a uint16 blend with an integer division."""
    rgb = np.asarray(Image.fromarray(entry.rgb).resize((width, height), Image.BILINEAR))
    alpha = np.asarray(Image.fromarray(entry.alpha).resize((width, height), Image.BILINEAR))
    region = image[y0 : y0 + height, x0 : x0 + width]
    a = alpha.astype(np.uint16)[..., None]
    region[...] = ((rgb.astype(np.uint16) * a + region.astype(np.uint16) * (255 - a) + 127) // 255).astype(np.uint8)


def _reference_transform(crop: tuple[int, int]) -> SegmentationTransform:
    """Main's train transform: albumentations RandomScale -> PadIfNeeded -> RandomCrop, flip, jitter, normalise."""
    fill = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)
    steps = [
        A.RandomScale(scale_limit=(-0.5, 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
        A.PadIfNeeded(
            min_height=crop[0], min_width=crop[1], border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=VOID_ID
        ),
        A.RandomCrop(height=crop[0], width=crop[1]),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.05, 0.05), p=0.5),
    ]
    return SegmentationTransform(steps, seed=0)


def _time(fn: Callable[[int], object], calls: int, offset: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``calls`` calls."""
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(offset + i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _machine() -> str:
    cpu, load = cpu_name(), load_average()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, load average {load:.1f}, GPU {gpu}; Python {platform.python_version()}, "
        f"{platform.platform()}, torch {torch.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}, "
        f"albumentations {A.__version__}"
    )


def main() -> None:
    """Run the benchmark and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians over rounds)")
    ap.add_argument("--calls", type=int, default=4, help="calls per candidate per round")
    ap.add_argument("--bank-size", type=int, default=64)
    ap.add_argument("--crop", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenCV threads (a DataLoader worker uses 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (e.g. benchmarks/results/)")
    ap.add_argument(
        "--stages", nargs="+", default=None, metavar="WORD", help="only the stages whose name contains one of these"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    crop = (int(args.crop[0]), int(args.crop[1]))
    import torchvision.io as tvio

    try:
        import pyspng as spng
    except ImportError:
        spng = None

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cityscapes"
        write_frames(root, args.frames)
        bank = OutlierBank(Path(tmp) / "bank")
        fill_bank(ProceduralObjectSource(size_range=(96, 384)), bank, args.bank_size, seed=0)
        old_bank = format_1_bank(bank, Path(tmp) / "bank-format-1")
        zlib_bank = OutlierBank(Path(tmp) / "bank-zlib", compress=True)
        for key, e in bank.iter_entries():
            zlib_bank.add(e, key=key)
        bank_keys = bank.keys()
        ds = CityscapesDataset(root, split="train")
        cached = DecodedCache(ds, Path(tmp) / "decoded")
        images = [f.image for f in ds.frames]
        labels = [f.label for f in ds.frames]
        n = len(images)
        raws = [ds[i] for i in range(n)]
        ids = [np.array(Image.open(p)) for p in labels]
        trains = [LABEL_TO_TRAIN_ID[a] for a in ids]
        lut = np.full(256, VOID_ID, np.uint8)
        lut[: len(LABEL_TO_TRAIN_ID)] = LABEL_TO_TRAIN_ID
        ood_lut = np.zeros(256, np.uint8)
        ood_lut[VOID_ID], ood_lut[OOD_ID] = VOID_ID, 1
        rng = np.random.default_rng(0)
        fill = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)
        old_geo = A.Compose(
            [
                A.RandomScale(scale_limit=(-0.5, 1.0), interpolation=cv2.INTER_LINEAR, p=1.0),
                A.PadIfNeeded(crop[0], crop[1], border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=VOID_ID),
                A.RandomCrop(*crop),
            ],
            additional_targets={"ood": "mask"},
            mask_interpolation=cv2.INTER_NEAREST,
            seed=0,
        )
        new_geo = A.Compose(
            [RandomScaleCrop(*crop, scale_range=(0.5, 2.0), fill=fill, fill_mask=VOID_ID)],
            additional_targets={"ood": "mask"},
            seed=0,
        )
        crops = [
            old_geo(image=r["image"], mask=r["label"], ood=r["ood"]) for r in raws
        ]  # uint8 crops for the later stages
        crop_imgs = [c["image"] for c in crops]
        flip = A.HorizontalFlip(p=1.0)
        jitter = A.ColorJitter(
            brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.05, 0.05), p=1.0
        )
        normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
        mixer = OutlierMixer(BankSource(bank.root), probability=1.0)
        mixer_cold = OutlierMixer(BankSource(bank.root, cache_size=0), probability=1.0)
        mixer_old = OutlierMixer(BankSource(old_bank.root, cache_size=0), probability=1.0)
        fast_jitter = FastColorJitter(
            brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.05, 0.05), p=1.0
        )
        jitter.set_random_seed(0)
        fast_jitter.set_random_seed(0)
        entries = [bank.get(k) for k in bank_keys]
        m = len(entries)
        boxes = [(int(round(e.rgb.shape[1] * 1.3)), int(round(e.rgb.shape[0] * 1.3))) for e in entries]
        entry = ProceduralObjectSource(size_range=(300, 300)).sample(np.random.default_rng(0))
        canvas = [r["image"].copy() for r in raws]
        masks = [(r["label"].copy(), r["ood"].copy()) for r in raws]
        lut_normalize = SegmentationTransform([])
        ref_transform = _reference_transform(crop)
        new_transform = train_transform(crop_size=crop, seed=0)
        new_transform_u8 = train_transform(crop_size=crop, seed=0, output="uint8")

        def pil_image(i: int) -> np.ndarray:
            with Image.open(images[i % n]) as im:
                im.load()
                return np.array(im.convert("RGB"))

        def reference_sample(i: int) -> object:
            raw = {"image": pil_image(i), "name": "x"}
            raw["label"], raw["ood"] = _reference_label(labels[i % n])
            return ref_transform(raw, seed=i)

        stages: dict[str, Stage] = {
            "decode image (2048x1024 RGB PNG)": {
                "PIL open + load + np.array": pil_image,
                "cv2.imread IMREAD_UNCHANGED + BGR->RGB": lambda i: cv2.cvtColor(
                    cv2.imread(str(images[i % n]), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB
                ),
                "cv2.imdecode(bytes) + BGR->RGB": lambda i: cv2.cvtColor(
                    cv2.imdecode(np.frombuffer(images[i % n].read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED),
                    cv2.COLOR_BGR2RGB,
                ),
                "torchvision.io.decode_png (CHW tensor)": lambda i: tvio.decode_png(tvio.read_file(str(images[i % n]))),
                **(
                    {"pyspng.load(bytes) (libspng, no CRC check)": lambda i: spng.load(images[i % n].read_bytes())}
                    if spng is not None
                    else {}
                ),
                f"library read_image ({PNG_DECODER})": lambda i: read_image(images[i % n]),
            },
            "decode label (labelIds PNG)": {
                "PIL open + load + np.array": lambda i: np.array(Image.open(labels[i % n])),
                "cv2.imdecode(bytes)": lambda i: cv2.imdecode(
                    np.frombuffer(labels[i % n].read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED
                ),
                f"library read_label ({PNG_DECODER})": lambda i: read_label(labels[i % n]),
            },
            "label id -> train id": {
                "LUT[ids] (fancy indexing)": lambda i: LABEL_TO_TRAIN_ID[ids[i % n]],
                "np.take": lambda i: np.take(LABEL_TO_TRAIN_ID, ids[i % n]),
                "cv2.LUT": lambda i: cv2.LUT(ids[i % n], lut),
            },
            "label value check (ids present)": {
                "np.bincount": lambda i: np.flatnonzero(np.bincount(ids[i % n].ravel(), minlength=256)),
                "cv2.calcHist": lambda i: np.flatnonzero(cv2.calcHist([ids[i % n]], [0], None, [256], [0, 256])),
            },
            "OOD target from train ids": {
                "zeros + 2 comparisons": lambda i: (
                    lambda t: (lambda o: (o.__setitem__(t == VOID_ID, VOID_ID), o.__setitem__(t == OOD_ID, 1), o))(
                        np.zeros_like(t)
                    )
                )(trains[i % n]),
                "cv2.LUT": lambda i: cv2.LUT(trains[i % n], ood_lut),
            },
            "random scale + pad + crop (image + 2 masks)": {
                "albumentations RandomScale -> PadIfNeeded -> RandomCrop": lambda i: old_geo(
                    image=raws[i % n]["image"], mask=raws[i % n]["label"], ood=raws[i % n]["ood"]
                ),
                "RandomScaleCrop (crop window only)": lambda i: new_geo(
                    image=raws[i % n]["image"], mask=raws[i % n]["label"], ood=raws[i % n]["ood"]
                ),
            },
            "horizontal flip (crop, image + 2 masks)": {
                "albumentations HorizontalFlip": lambda i: flip(
                    image=crops[i % n]["image"], mask=crops[i % n]["mask"], ood=crops[i % n]["ood"]
                ),
            },
            "colour jitter (uint8 crop, p=1)": {
                "albumentations ColorJitter": lambda i: jitter(image=crop_imgs[i % n]),
                "library FastColorJitter (one-pass saturation)": lambda i: fast_jitter(image=crop_imgs[i % n]),
            },
            "normalise + to tensor (crop)": {
                "albumentations Normalize + CHW float tensor": lambda i: torch.from_numpy(
                    normalize(image=crop_imgs[i % n])["image"].transpose(2, 0, 1)
                ).contiguous(),
                "library: per-channel lookup tables into the CHW float tensor": lambda i: lut_normalize(
                    {"image": crop_imgs[i % n]}
                ),
                "CHW uint8 tensor (normalised on the device)": lambda i: torch.from_numpy(
                    np.ascontiguousarray(crop_imgs[i % n].transpose(2, 0, 1))
                ),
                "  ... then torch normalise (uint8 -> float, here on CPU)": lambda i: (
                    (torch.from_numpy(np.ascontiguousarray(crop_imgs[i % n].transpose(2, 0, 1))).float() - mean) / std
                ),
            },
            "paste one object (300 px entry -> 400x380, alpha blend)": {
                "PIL bilinear resize + uint16 blend with // 255": lambda i: _reference_paste(
                    canvas[i % n], entry, 40, 30, 400, 380
                ),
                "library paste_object (OpenCV resize, exact blend)": lambda i: paste_object(
                    canvas[i % n], *masks[i % n], entry, 40, 30, 400, 380
                ),
            },
            "bank entry read + verify (96-384 px object)": {
                "format 1: compressed .npz (earlier default)": lambda i: old_bank.get(bank_keys[i % m]),
                "format 2, zlib level 1 (compress=True)": lambda i: zlib_bank.get(bank_keys[i % m]),
                "format 2, raw (default)": lambda i: bank.get(bank_keys[i % m]),
            },
            "mixing: copy the raw frame (image + label + ood, 2048x1024)": {
                "3 NumPy copies (the default; copy_input=False skips them)": lambda i: (
                    raws[i % n]["image"].copy(),
                    raws[i % n]["label"].copy(),
                    raws[i % n]["ood"].copy(),
                ),
            },
            "mixing: one bank object (96-384 px) pasted at 1.3x": {
                "paste_object (resize + blend + labels)": lambda i: paste_object(
                    canvas[i % n], *masks[i % n], entries[i % m], 10, 10, *boxes[i % m]
                ),
                "  ... of which the resize (RGB + alpha)": lambda i: _resized_rgba(entries[i % m], *boxes[i % m]),
            },
            "outlier mixing p=1.0 (raw frame)": {
                "OutlierMixer, format 1 bank, every entry read from disk": lambda i: mixer_old(
                    raws[i % n], index=i, epoch=0
                ),
                "OutlierMixer, bank entries cached": lambda i: mixer(raws[i % n], index=i, epoch=0),
                "OutlierMixer, every entry read from disk": lambda i: mixer_cold(raws[i % n], index=i, epoch=0),
            },
            "whole sample (read + transform)": {
                "reference (PIL, NumPy labels, scale->pad->crop, float)": reference_sample,
                "library, float output": lambda i: new_transform(ds[i % n], seed=i),
                "library, uint8 output": lambda i: new_transform_u8(ds[i % n], seed=i),
                "library, float output, decoded cache (warm)": lambda i: new_transform(cached[i % n], seed=i),
                "library, uint8 output, decoded cache (warm)": lambda i: new_transform_u8(cached[i % n], seed=i),
            },
        }
        if args.stages:
            stages = {k: v for k, v in stages.items() if any(w.lower() in k.lower() for w in args.stages)}
        for i in range(n):  # fill the decoded cache
            cached[i]
        for stage in stages.values():  # warm-up: page cache, bank cache, lazy imports
            for fn in stage.values():
                fn(0)
        results: dict[str, dict[str, list[float]]] = {s: {c: [] for c in cands} for s, cands in stages.items()}
        for r in range(args.rounds):
            for s, cands in stages.items():
                order = list(cands.items())
                if r % 2:
                    order.reverse()
                for c, fn in order:
                    results[s][c].append(_time(fn, args.calls, offset=r * args.calls))
        del rng
    print(
        f"\n## Data pipeline stages, per sample ({args.frames} frames 2048x1024 -> {crop[0]}x{crop[1]} crops, "
        f"{args.threads} thread(s), median of {args.rounds} interleaved rounds x {args.calls} calls)\n"
    )
    print("| stage | candidate | ms (median) | speed-up vs first |")
    print("|---|---|---|---|")
    table: dict[str, dict[str, float]] = {}
    for s, cands in results.items():
        table[s] = {c: statistics.median(v) for c, v in cands.items()}
        ref = next(iter(table[s].values()))
        for c, ms in table[s].items():
            print(f"| {s} | {c} | {ms:.2f} | {ref / ms:.2f}x |")
    machine = _machine()
    print(f"\nMachine: {machine}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"machine": machine, "args": vars(args) | {"json": str(args.json)}, "ms": table}, indent=1)
        )


if __name__ == "__main__":
    main()
