"""Synthetic-set QC: per-frame label faithfulness and object presence, the table, filtered views, resume, errors.

The set: procedural demo scenes (Cityscapes layout) with a pasted object each, written in the
layout of ``generate --eval_dir``; half the frames are corrupted on purpose (label ids shuffled,
or the object's pixels blanked back to the scene). The reference segmenter is a real per-pixel
linear classifier (a 1x1 convolution) fitted in closed form on the demo training frames
(nearest class mean); the object-mask fixture finds the object's colour (it never reads labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthrel_lightning.atomic import atomic_save_png
from synthrel_lightning.data import CityscapesDataset, SyntheticFramesDataset
from synthrel_lightning.data.demo import write_demo_cityscapes
from synthrel_lightning.data.transforms import eval_transform
from synthrel_lightning.labels import NUM_CLASSES, OOD_ID, TRAIN_ID_NAMES, VOID_ID, semantic_to_ood_target
from synthrel_lightning.models import OODSegmenter
from synthrel_lightning.qc import (
    MissingQCTable,
    QCFilter,
    QCThresholds,
    filter_report,
    filtered_indices,
    load_qc_table,
    run_qc,
)
from synthrel_lightning.synthesis.object_masks import BoxMasker, ChangedPixelsMasker, ObjectMasker

OBJECT_RGB = np.array([255, 0, 255], np.uint8)
SHUFFLED = {1, 3}
BLANKED = {5, 7}
N_FRAMES = 8


class CentroidSegmenter(nn.Module):
    """Nearest class mean as a 1x1 convolution: logit_k(x) = 2 mu_k . x - |mu_k|^2 (absent classes: -1e4)."""

    output_kind = "per_pixel"

    def __init__(self, means: torch.Tensor, present: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, means.shape[0], 1)
        with torch.no_grad():
            self.conv.weight.copy_(2 * means[:, :, None, None])
            self.conv.bias.copy_(torch.where(present, -(means**2).sum(1), torch.full_like(means[:, 0], -1e4)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)


class ColourMasker(ObjectMasker):
    """Test fixture: the object is where the crop shows the pasted object's colour (reads the image only)."""

    def __init__(self, die_after: int | None = None) -> None:
        super().__init__()
        self._calls = 0
        self._die_after = die_after  # simulates a kill (private: not part of the masker's settings)

    @property
    def calls(self) -> int:
        return self._calls

    def find(self, crop: np.ndarray, original: np.ndarray, box, object_name: str) -> np.ndarray:
        if self._calls == self._die_after:
            raise KeyboardInterrupt("killed")
        self._calls += 1
        return np.abs(crop.astype(np.int16) - OBJECT_RGB.astype(np.int16)).sum(-1) < 30


def _fit_centroids(root: Path) -> CentroidSegmenter:
    train = CityscapesDataset(root, split="train")
    tf = eval_transform()
    sums = torch.zeros(NUM_CLASSES, 3, dtype=torch.float64)
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for i in range(len(train)):
        s = tf(train.load_raw(i))
        x, y = s["image"].reshape(3, -1).double(), s["label"].reshape(-1).long()
        keep = y < NUM_CLASSES
        sums.index_add_(0, y[keep], x[:, keep].T)
        counts += torch.bincount(y[keep], minlength=NUM_CLASSES).double()
    means = (sums / counts.clamp_min(1)[:, None]).float()
    return CentroidSegmenter(means, counts > 0).eval()


def _disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Demo scenes, a synthetic set with half its frames corrupted, and the fitted reference."""
    base = tmp_path_factory.mktemp("qc")
    cs = write_demo_cityscapes(base / "cs", num_train=6, num_val=N_FRAMES, size=(64, 128), seed=0)
    val = CityscapesDataset(cs, split="val")
    root = base / "sets" / "objects"
    rng = np.random.default_rng(0)
    for i in range(N_FRAMES):
        raw = val.load_raw(i)
        image, label = raw["image"].copy(), raw["label"].copy()
        mask = _disc(64, 128, 44 + (i % 3), 20 + 12 * i, 7)
        clean = image.copy()
        image[mask] = OBJECT_RGB
        label[mask] = OOD_ID
        if i in SHUFFLED:  # labels shuffled: every class id sent to another one
            perm = np.roll(np.arange(NUM_CLASSES), 7)
            ids = label < NUM_CLASSES
            label[ids] = perm[label[ids]]
        if i in BLANKED:  # the object's region blanked back to the scene: the label says OOD, nothing is there
            image[mask] = clean[mask]
        key = f"f{i}"
        atomic_save_png(root / "images" / f"{key}.png", image)
        atomic_save_png(root / "labels" / f"{key}_labelTrainIds.png", label)
        atomic_save_png(root / "labels" / f"{key}_ood.png", semantic_to_ood_target(label))
        (root / "labels" / f"{key}_object.json").write_text(json.dumps({"object": str(rng.choice(["lion", "box"]))}))
    return {"cs": cs, "root": root, "model": _fit_centroids(cs), "base": base}


def _reference(world: dict) -> OODSegmenter:
    return OODSegmenter(segmenter=world["model"], num_classes=NUM_CLASSES)


def test_table_flags_exactly_the_corrupted_frames(world: dict, tmp_path: Path) -> None:
    ds = SyntheticFramesDataset(world["root"])
    masker = ColourMasker()
    result = run_qc(ds, {"centroid": _reference(world)}, masker, qc_dir=tmp_path / "qc", device="cpu")
    table = result.table
    assert (tmp_path / "qc" / "frames.csv").is_file() and (tmp_path / "qc" / "summary.json").is_file()
    low_acc = {int(n[1:]) for n in ds.names if table.get(n, "centroid.pixel_acc") < 0.5}
    low_miou = {int(n[1:]) for n in ds.names if table.get(n, "centroid.miou") < 0.3}
    missing_object = {int(n[1:]) for n in ds.names if table.get(n, "object.iou") < 0.5}
    assert low_acc == SHUFFLED and low_miou == SHUFFLED
    assert missing_object == BLANKED
    good = [n for n in ds.names if int(n[1:]) not in SHUFFLED | BLANKED]
    assert all(table.get(n, "object.iou") == 1.0 for n in good)
    assert {table.get(n, "object.name") for n in ds.names} <= {"lion", "box"}
    assert all(table.get(n, "object.status") == "checked" for n in ds.names)

    # One frame checked against the definitions, transcribed here independently of the package.
    name = good[0]
    raw = ds.load_raw(ds.names.index(name))
    with torch.no_grad():
        pred = world["model"](eval_transform()(raw)["image"][None]).argmax(1)[0].numpy()
    lab = raw["label"]
    valid = lab < NUM_CLASSES
    assert table.get(name, "centroid.n_px") == int(valid.sum())
    assert table.get(name, "centroid.pixel_acc") == pytest.approx(float((pred[valid] == lab[valid]).mean()))
    ious = []
    for k in range(NUM_CLASSES):
        inter = int(((pred == k) & (lab == k) & valid).sum())
        union = int((((pred == k) | (lab == k)) & valid).sum())
        if union:
            ious.append(inter / union)
        assert table.get(name, f"centroid.tp.{TRAIN_ID_NAMES[k].replace(' ', '_')}") == inter
    assert table.get(name, "centroid.miou") == pytest.approx(float(np.mean(ious)))
    assert table.get(name, "ood_px") == int((lab == OOD_ID).sum()) > 0

    s = result.summary
    assert s["complete"] and s["frames"] == N_FRAMES
    assert s["objects"]["checked"] == N_FRAMES and s["objects"]["found_fraction"] == pytest.approx(6 / 8)
    ref = s["references"]["centroid"]
    assert {n for n, _ in ref["frames_by_miou"]["worst"][:2]} == {f"f{i}" for i in SHUFFLED}
    road = ref["per_class"]["road"]
    tp = sum(table.get(n, "centroid.tp.road") for n in ds.names)
    fn = sum(table.get(n, "centroid.fn.road") for n in ds.names)
    assert road["acc"] == pytest.approx(tp / (tp + fn)) and road["label_px"] == tp + fn


def test_filtered_view_keeps_exactly_the_good_frames(world: dict) -> None:
    ds = SyntheticFramesDataset(world["root"])
    run_qc(ds, {"centroid": _reference(world)}, ColourMasker(), device="cpu")  # default folder: beside the set
    qc_dir = world["root"].parent / "objects.qc"
    assert (qc_dir / "frames.csv").is_file() and not any(p.suffix == ".csv" for p in world["root"].rglob("*"))
    good = [f"f{i}" for i in range(N_FRAMES) if i not in SHUFFLED | BLANKED]
    th = QCThresholds(min_miou=0.3, min_object_iou=0.5)
    assert [ds.names[i] for i in filtered_indices(ds, th)] == good
    assert filtered_indices(ds, QCThresholds(min_object_iou=0.5)) == [i for i in range(N_FRAMES) if i not in BLANKED]

    view = SyntheticFramesDataset(world["root"], qc_filter={"min_miou": 0.3, "min_object_iou": 0.5})
    assert view.names == good and len(view) == 4
    assert view[0]["name"] == good[0]
    assert len(list((world["root"] / "images").glob("*.png"))) == N_FRAMES  # nothing deleted
    rep = view.qc_report
    assert rep["kept"] == 4 and rep["kept_fraction"] == 0.5
    assert rep["failed"] == {"centroid.miou": 2, "object.iou": 2}
    # Per class: frames holding the class in their label map, and the share of its labelled pixels kept.
    table = load_qc_table(qc_dir)
    px = {n: table.get(n, "centroid.tp.sky") + table.get(n, "centroid.fn.sky") for n in ds.names}
    assert rep["per_class"]["sky"]["kept_pixel_fraction"] == pytest.approx(sum(px[n] for n in good) / sum(px.values()))
    assert sum(v["frames"] for v in rep["per_object"].values()) == N_FRAMES

    # A string, a QCFilter and the max_samples cut after the filter.
    assert SyntheticFramesDataset(world["root"], qc_filter="min_miou=0.3", max_samples=2).names == ["f0", "f2"]
    assert len(SyntheticFramesDataset(world["root"], qc_filter=QCFilter(min_object_iou=0.5, qc_dir=str(qc_dir)))) == 6
    with pytest.raises(ValueError, match="keeps none of its 8 frames"):
        SyntheticFramesDataset(world["root"], qc_filter={"min_pixel_acc": 1.0})

    # Reachable from YAML: a dataset's qc_filter given as a mapping in a LightningCLI-style config.
    from jsonargparse import ArgumentParser

    from synthrel_lightning.commands._parsing import instantiate
    from synthrel_lightning.data.base import SegmentationDataset

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--ds", type=SegmentationDataset)
    cfg = parser.parse_object(
        {"ds": {"class_path": "synthrel_lightning.data.SyntheticFramesDataset",
                "init_args": {"root": str(world["root"]), "qc_filter": {"min_miou": 0.3, "min_object_iou": 0.5}}}}
    )  # fmt: skip
    assert instantiate(parser, cfg).ds.names == good


def test_resume_recomputes_nothing(world: dict, tmp_path: Path) -> None:
    ds = SyntheticFramesDataset(world["root"])
    qc_dir = tmp_path / "qc"

    model = _reference(world)
    with pytest.raises(KeyboardInterrupt):
        run_qc(ds, {"centroid": model}, ColourMasker(die_after=5), qc_dir=qc_dir, device="cpu", flush_every=2)
    assert len(load_qc_table(qc_dir).rows) == 4  # two flushes of two frames survived the kill

    masker = ColourMasker()
    second = run_qc(ds, {"centroid": model}, masker, qc_dir=qc_dir, device="cpu", flush_every=2)
    assert second.computed == {"centroid": 4, "objects": 4} and masker.calls == 4
    before = (qc_dir / "frames.csv").read_bytes()

    from synthrel_lightning.qc import ReferenceSegmenter

    ref, masker = ReferenceSegmenter("centroid", model), ColourMasker()
    third = run_qc(ds, [ref], masker, qc_dir=qc_dir, device="cpu")
    assert third.computed == {"centroid": 0, "objects": 0} and ref.calls == 0 and masker.calls == 0
    assert (qc_dir / "frames.csv").read_bytes() == before

    # A new reference adds its columns only; changed weights recompute that reference only.
    other = OODSegmenter(segmenter=CentroidSegmenter(torch.zeros(NUM_CLASSES, 3), torch.ones(NUM_CLASSES, dtype=bool)))
    fourth = run_qc(ds, {"centroid": model, "flat": other}, ColourMasker(), qc_dir=qc_dir, device="cpu")
    assert fourth.computed == {"centroid": 0, "flat": N_FRAMES, "objects": 0}
    with torch.no_grad():
        other.segmenter.conv.bias[0] += 1.0
    fifth = run_qc(ds, {"centroid": model, "flat": other}, None, qc_dir=qc_dir, device="cpu")
    assert fifth.computed == {"centroid": 0, "flat": N_FRAMES, "objects": 0}
    assert load_qc_table(qc_dir).has_objects  # object columns kept when no masker is passed


def test_missing_table_names_the_set_and_the_command(world: dict, tmp_path: Path) -> None:
    root = world["root"]
    elsewhere = tmp_path / "no-qc"
    with pytest.raises(MissingQCTable) as err:
        SyntheticFramesDataset(root, qc_filter={"min_miou": 0.5, "qc_dir": str(elsewhere)})
    msg = str(err.value)
    assert f"SyntheticFramesDataset(root='{root}')" in msg
    assert (
        f"python -m synthrel_lightning qc --dataset synthrel_lightning.data.SyntheticFramesDataset "
        f"--dataset.root {root} --qc_dir {elsewhere} --references" in msg
    )
    cs_val = CityscapesDataset(world["cs"], split="val")
    with pytest.raises(MissingQCTable, match="--dataset.split val"):
        filtered_indices(cs_val, QCThresholds(min_miou=0.5))


def test_bad_references_and_maskers_fail_at_start(world: dict, tmp_path: Path) -> None:
    from synthrel_lightning.models.segmenters import HFSegformer

    ds = SyntheticFramesDataset(world["root"])
    qc_dir = tmp_path / "qc"
    tiny = dict(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], num_attention_heads=[1],
                patch_sizes=[7], strides=[4], mlp_ratios=[1], decoder_hidden_size=8)  # fmt: skip
    five = HFSegformer(checkpoint=None, num_classes=5, config=tiny)
    with pytest.raises(ValueError, match="has 5 classes but .* is labelled with 19"):
        run_qc(ds, {"segformer5": five}, qc_dir=qc_dir, device="cpu")
    names = list(TRAIN_ID_NAMES)
    names[0], names[1] = names[1], names[0]
    swapped = OODSegmenter(segmenter=world["model"], class_names=names)
    with pytest.raises(ValueError, match="names its classes differently"):
        run_qc(ds, {"swapped": swapped}, qc_dir=qc_dir, device="cpu")
    with pytest.raises(ValueError, match="cannot check object presence"):
        run_qc(ds, None, BoxMasker(), qc_dir=qc_dir)
    with pytest.raises(ValueError, match="comparing with the frame before inpainting"):
        run_qc(ds, None, ChangedPixelsMasker(), qc_dir=qc_dir)
    with pytest.raises(ValueError, match="inside the set folder"):
        run_qc(ds, {"centroid": _reference(world)}, qc_dir=world["root"] / "qc", device="cpu")
    assert not qc_dir.exists() and not (world["root"] / "qc").exists()  # nothing written by a refused run


def test_object_names_come_from_sidecar_or_source(world: dict, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "set"
    shutil.copytree(world["root"], root)
    for f in (root / "labels").glob("*_object.json"):
        f.unlink()
    ds = SyntheticFramesDataset(root)
    with pytest.raises(ValueError, match="frame 'f0' .* has OOD pixels but no object name"):
        run_qc(ds, None, ColourMasker(), qc_dir=tmp_path / "qc", device="cpu")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({f"f{i}": "giraffe" for i in range(N_FRAMES)}))
    result = run_qc(ds, None, ColourMasker(), qc_dir=tmp_path / "qc", object_names=names, device="cpu")
    assert result.summary["objects"]["per_object"]["giraffe"]["frames"] == N_FRAMES


def test_open_vocabulary_masker_is_asked_on_the_square_around_the_object(world: dict, tmp_path: Path) -> None:
    from synthrel_lightning.qc.presence import presence_crop
    from synthrel_lightning.synthesis.object_masks import OpenVocabMasker
    from synthrel_lightning.testing import build_tiny_owlv2, build_tiny_sam

    masker = OpenVocabMasker(box_threshold=0.0, device="cpu", detector=build_tiny_owlv2(), sam=build_tiny_sam())
    ds = SyntheticFramesDataset(world["root"], max_samples=2)
    table = run_qc(ds, None, masker, qc_dir=tmp_path / "qc", device="cpu").table
    for i, name in enumerate(ds.names):
        raw = ds.load_raw(i)
        labelled = raw["label"] == OOD_ID
        crop, inner = presence_crop(labelled)
        assert crop.side == 15 and inner.side == 15  # the disc's bounding square (radius 7)
        found = masker.find(raw["image"][crop.slices], raw["image"][crop.slices], inner, table.get(name, "object.name"))
        lab = labelled[crop.slices]
        expected = (found & lab).sum() / (found | lab).sum()
        assert table.get(name, "object.iou") == pytest.approx(float(expected))
        assert table.get(name, "object.detected_px") == int(found.sum())


def test_qc_command_scores_through_the_zoo_and_reports_a_view(world: dict, tmp_path: Path, capsys) -> None:
    from synthrel_lightning.commands.qc import main

    ckpt = tmp_path / "centroid.ckpt"
    model = OODSegmenter(segmenter=world["model"].conv, num_classes=NUM_CLASSES)  # the same 1x1 convolution
    torch.save({"state_dict": model.state_dict()}, ckpt)
    zoo = tmp_path / "zoo.yaml"
    conv = {"class_path": "torch.nn.Conv2d", "init_args": {"in_channels": 3, "out_channels": 19, "kernel_size": 1}}
    spec = {"class_path": "synthrel_lightning.models.OODSegmenter", "init_args": {"segmenter": conv}}
    zoo.write_text(json.dumps({"zoo": [{"name": "centroid", "checkpoint": str(ckpt), "model": spec}]}))
    qc_dir = tmp_path / "qc"
    args = ["--dataset", "synthrel_lightning.data.SyntheticFramesDataset", "--dataset.root", str(world["root"]),
            "--references", str(zoo), "--qc_dir", str(qc_dir), "--device", "cpu",
            "--filter", "min_miou=0.3"]  # fmt: skip
    out = main(args)
    expected = run_qc(SyntheticFramesDataset(world["root"]), {"centroid": model}, qc_dir=tmp_path / "direct",
                      device="cpu").table  # fmt: skip
    got = load_qc_table(qc_dir)
    for n in expected.names:
        assert got.get(n, "centroid.miou") == expected.get(n, "centroid.miou")
    assert out["view"]["kept"] == N_FRAMES - len(SHUFFLED)
    assert (qc_dir / "view_min_miou=0.3.json").is_file()
    assert "keeps 6 of 8 frames" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset", "synthrel_lightning.data.SyntheticFramesDataset", "--dataset.root", str(world["root"]),
              "--qc_dir", str(tmp_path / "none"), "--filter", "min_miou=0.3"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("qc: error: SyntheticFramesDataset(") and "python -m synthrel_lightning qc" in err[-1]


def test_thresholds_parse_and_validate() -> None:
    th = QCThresholds.parse("min_miou=0.5, min_object_iou=0.25,reference=segformer_b0")
    assert th == QCThresholds(min_miou=0.5, min_object_iou=0.25, reference="segformer_b0")
    assert QCThresholds.parse(th.describe()) == th
    with pytest.raises(ValueError, match="min_miou must be a number in"):
        QCThresholds(min_miou=1.5)
    with pytest.raises(ValueError, match="unknown option"):
        QCThresholds.parse("min_iou=0.5")
    with pytest.raises(ValueError, match="not a number"):
        QCThresholds.parse("min_miou=high")
    assert QCFilter.parse({"min_miou": 0.1, "qc_dir": "x"}).qc_dir == "x"
    assert VOID_ID not in range(NUM_CLASSES)


def test_filter_reads_only_scores_the_table_has(world: dict, tmp_path: Path) -> None:
    ds = SyntheticFramesDataset(world["root"])
    run_qc(ds, {"centroid": _reference(world)}, qc_dir=tmp_path / "qc", device="cpu")
    table = load_qc_table(tmp_path / "qc")
    with pytest.raises(ValueError, match="no object-presence columns"):
        filtered_indices(ds, QCThresholds(min_object_iou=0.5), table)
    with pytest.raises(ValueError, match="reference 'segformer' is not in the table"):
        filter_report(ds, QCThresholds(min_miou=0.5, reference="segformer"), table)
    fewer = SyntheticFramesDataset(world["root"], max_samples=3)
    assert filtered_indices(fewer, QCThresholds(min_miou=0.3), table) == [0, 2]
