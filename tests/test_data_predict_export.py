"""Predict on any image folder (API and CLI); benchmark submissions (SegmentMeIfYouCan files, Fishyscapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthrel_lightning.cli import DEMO_CONFIG, main
from synthrel_lightning.data import DatasetError, FolderDataset, SMIYCDataset, eval_transform
from synthrel_lightning.export import FishyscapesEstimator, export_smiyc, read_smiyc_score, smiyc_path
from synthrel_lightning.models import OODSegmenter, TinySegmenter

SMIYC_TEMPLATE = "anomaly_p/{method_name}/{dset_name}/{fid}.hdf5"
"""The benchmark's own path template (road_anomaly_benchmark/evaluation.py, under DIR_OUTPUTS)."""


def _image(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def _folder(root: Path) -> Path:
    _image(root / "a.jpg", 40, 64, 0)
    _image(root / "street" / "b.PNG", 48, 64, 1)
    _image(root / "street" / "deeper" / "c.webp", 40, 64, 2)
    _image(root / ".cache" / "hidden.jpg", 40, 64, 3)
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_dataset_finds_images_recursively_with_relative_names(tmp_path: Path) -> None:
    ds = FolderDataset(_folder(tmp_path / "imgs"))
    assert ds.names == ["a", "street/b", "street/deeper/c"]
    sample = ds[1]
    assert sample["image"].shape == (48, 64, 3) and (sample["label"] == 255).all() and (sample["ood"] == 255).all()
    _image(tmp_path / "imgs" / "a.png", 8, 8, 4)
    with pytest.raises(DatasetError, match="would both be named 'a'"):
        FolderDataset(tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        FolderDataset(tmp_path / "empty")


def test_predict_on_a_folder_from_the_cli_writes_score_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _folder(tmp_path / "imgs")
    out = tmp_path / "pred"
    monkeypatch.chdir(tmp_path)
    main(
        [
            "predict",
            "--config",
            str(DEMO_CONFIG),
            f"--data.init_args.root={tmp_path / 'demo'}",
            f"--data.init_args.predict_folder={images}",
            "--data.init_args.eval_batch_size=3",
            f"--model.init_args.prediction_dir={out}",
            "--trainer.logger=false",
        ]
    )
    scores = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_score.npy"))
    assert scores == ["a_score.npy", "street/b_score.npy", "street/deeper/c_score.npy"]
    # Frames of different sizes share a padded batch; each map has its own image's size.
    assert np.load(out / "a_score.npy").shape == (40, 64)
    assert np.load(out / "street" / "b_score.npy").shape == (48, 64)


def test_predict_set_is_accepted_by_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["predict", "--config", str(DEMO_CONFIG), "--data.init_args.predict_set=demo_objects", "--print_config"])
    assert done.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["predict_set"] == "demo_objects"


def test_smiyc_test_split_serves_unlabelled_images(tmp_path: Path) -> None:
    track = tmp_path / "dataset_AnomalyTrack"
    _image(track / "images" / "validation0000.jpg", 40, 64, 0)
    (track / "labels_masks").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(track / "labels_masks" / "validation0000_labels_semantic.png")
    _image(track / "images" / "airplane0000.jpg", 40, 64, 1)
    _image(track / "images" / "zebra0001.jpg", 48, 64, 2)
    test = SMIYCDataset(tmp_path, split="test")
    assert test.names == ["airplane0000", "zebra0001"] and not test.has_ood
    assert (test[1]["ood"] == 255).all() and test[1]["image"].shape == (48, 64, 3)
    assert SMIYCDataset(tmp_path).names == ["validation0000"]


def _read_as_the_benchmark_does(path: Path) -> np.ndarray:
    """road_anomaly_benchmark ChannelLoaderHDF5.read_file + Evaluation's np.squeeze."""
    import h5py

    with h5py.File(path, "r") as handle:
        variable = handle["value"]
        value = variable[:] if len(variable.shape) > 0 else variable
    return np.squeeze(value)


def test_smiyc_export_round_trips_through_the_official_file_naming(tmp_path: Path) -> None:
    import h5py

    rng = np.random.default_rng(0)
    scores = {"validation0000": rng.random((40, 64)).astype(np.float32), "zebra0001": rng.random((48, 64))}
    written = export_smiyc(scores.items(), tmp_path / "outputs", method="SynthRel", dataset="AnomalyTrack-test")
    for fid, score in scores.items():
        official = (
            tmp_path / "outputs" / SMIYC_TEMPLATE.format(method_name="SynthRel", dset_name="AnomalyTrack-all", fid=fid)
        )
        assert (
            official in written and smiyc_path(tmp_path / "outputs", "SynthRel", "AnomalyTrack-test", fid) == official
        )
        read = _read_as_the_benchmark_does(official)
        assert read.dtype == np.float16 and np.array_equal(read, score.astype(np.float16))
        assert np.array_equal(read_smiyc_score(official), read)
        with h5py.File(official) as f:
            assert f["value"].compression == "gzip" and f["value"].compression_opts == 9
    with pytest.raises(ValueError, match="frame id"):
        export_smiyc([("../escape", scores["zebra0001"])], tmp_path / "outputs", method="SynthRel")
    with pytest.raises(ValueError, match=r"must be \(H, W\)"):
        export_smiyc([("x", np.zeros((1, 2, 3)))], tmp_path / "outputs", method="SynthRel")


def test_export_submission_command_converts_predicted_score_maps(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    pred = tmp_path / "pred"
    pred.mkdir()
    maps = {"airplane0000": np.linspace(0, 1, 40 * 64, dtype=np.float32).reshape(40, 64)}
    np.save(pred / "airplane0000_score.npy", maps["airplane0000"])
    (pred / "airplane0000_pred.png").write_bytes(b"")  # other outputs of predict are ignored
    main(
        [
            "export_submission",
            f"--scores={pred}",
            f"--output_dir={tmp_path / 'sub'}",
            "--method=SynthRel",
            "--dataset=ObstacleTrack-test",
        ]
    )
    path = (
        tmp_path
        / "sub"
        / SMIYC_TEMPLATE.format(method_name="SynthRel", dset_name="ObstacleTrack-all", fid="airplane0000")
    )
    assert np.array_equal(_read_as_the_benchmark_does(path), maps["airplane0000"].astype(np.float16))
    assert "wrote 1 SegmentMeIfYouCan score files" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["export_submission", f"--scores={tmp_path / 'sub'}", f"--output_dir={tmp_path}", "--method=X"])
    assert exc.value.code == 2 and "no '*_score.npy' score maps" in capsys.readouterr().err


def test_fishyscapes_estimator_follows_the_benchmark_contract() -> None:
    torch.manual_seed(0)
    model = OODSegmenter(TinySegmenter(num_classes=19, width=4, depth=1), ood_score="msp", summary=False)
    estimator = FishyscapesEstimator(model)
    image = np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)
    # bdlb's evaluate(): uncertainties.append(estimator(batch['image_left']).numpy())
    uncertainty = estimator(torch.from_numpy(image)).numpy()
    assert uncertainty.shape == (40, 64) and uncertainty.dtype == np.float32
    with torch.no_grad():
        expected = model.score(model(eval_transform()({"image": image})["image"][None]))[0]
    np.testing.assert_allclose(uncertainty, expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        estimator(np.zeros((40, 64)))
    with pytest.raises(TypeError, match="TinySegmenter has no score"):
        FishyscapesEstimator(TinySegmenter(num_classes=19, width=4, depth=1))


# The benchmark's dataset registry (road_anomaly_benchmark/datasets/tracks.py and tracks_extra.py at
# SegmentMeIfYouCan/road-anomaly-benchmark), transcribed: each dataset's own config (name and, where set,
# name_for_persistence) and, for the subset classes whose get_frame hands the frame to another registered
# dataset, that dataset. DatasetBase.get_frame (dataset_io.py) sets the frame's dset_name to
# cfg.get('name_for_persistence', cfg.name) of the dataset that reads it, and evaluation.py reads
# DIR_OUTPUTS/anomaly_p/{method_name}/{dset_name}/{fid}.hdf5.
_OBSTACLE_DEFAULTS = {"name_for_persistence": "ObstacleTrack-all"}  # DatasetObstacleTrack.DEFAULTS
_OBSTACLE_SCENES = (
    "curvy darkasphalt darkasphaltDog darkasphaltAll gravel greyasphalt motorway shiny paving night snowstorm "
    "validation"
).split()  # DatasetObstacleTrack.SCENE_SPLITS -> 'ObstacleScene-<split>' with DEFAULTS
BENCHMARK_CONFIGS: dict[str, dict[str, str]] = {
    # tracks.py
    "AnomalyTrack-all": {},
    **{
        f"ObstacleTrack-{n}": dict(_OBSTACLE_DEFAULTS)
        for n in ("test", "all", "noNight", "night", "snowstorm", "validation")
    },
    **{f"ObstacleScene-{n}": dict(_OBSTACLE_DEFAULTS) for n in _OBSTACLE_SCENES},
    "RoadObstacleWeather-v1": {},
    "RoadObstacleExtra-v1": {},
    "LostAndFound-train": {},
    "LostAndFound-test": {},
    "LostAndFound-trainValid": {"name_for_persistence": "LostAndFound-train"},
    "LostAndFound-testValid": {"name_for_persistence": "LostAndFound-test"},
    "LostAndFound-testNoKnown": {"name_for_persistence": "LostAndFound-test"},
    "SmallObstacleDataset-train": {},
    "SmallObstacleDataset-test": {},
    "SmallObstacleDataset-val": {},
    # tracks_extra.py: subsets that read their frames through another dataset
    "LostAndFound-anomalyTrain": {"base": "LostAndFound-train"},
    "LostAndFound-anomalyTest": {"base": "LostAndFound-test"},
    "Erasing-20": {"base": "ObstacleTrack-all", "name_for_persistence": "ObstacleTrack-all"},
    "Erasing-20nodog": {"base": "ObstacleTrack-all", "name_for_persistence": "ObstacleTrack-all"},
    "Erasing-21": {"base": "ObstacleTrack-all", "name_for_persistence": "ObstacleTrack-all"},
    **{
        f"AnomalyTrack-{n}": {"base": "AnomalyTrack-all"}
        for n in ("animals", "vehicles", "other", "validation", "test")
    },
}


def _benchmark_folder(dataset: str) -> str:
    """The dset_name the benchmark reads a frame of ``dataset`` under (see BENCHMARK_CONFIGS)."""
    cfg = BENCHMARK_CONFIGS[dataset]
    if "base" in cfg:
        return _benchmark_folder(cfg["base"])
    return cfg.get("name_for_persistence", dataset)


def test_smiyc_paths_follow_the_benchmark_persistence_folders(tmp_path: Path) -> None:
    from synthrel_lightning.export import SMIYC_DATASETS

    # the README of the benchmark runs inference on these; the names map as stated there
    assert _benchmark_folder("AnomalyTrack-test") == _benchmark_folder("AnomalyTrack-validation") == "AnomalyTrack-all"
    assert _benchmark_folder("ObstacleTrack-test") == "ObstacleTrack-all"
    assert _benchmark_folder("LostAndFound-testNoKnown") == "LostAndFound-test"
    assert set(SMIYC_DATASETS) == set(BENCHMARK_CONFIGS)
    for dataset in BENCHMARK_CONFIGS:
        expected = tmp_path / SMIYC_TEMPLATE.format(method_name="M", dset_name=_benchmark_folder(dataset), fid="f_1")
        assert smiyc_path(tmp_path, "M", dataset, "f_1") == expected, dataset


def test_smiyc_export_refuses_unknown_dataset_names(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown SegmentMeIfYouCan dataset 'AnomalyTrack-tset'.*AnomalyTrack-test"):
        smiyc_path(tmp_path, "M", "AnomalyTrack-tset", "f")
    pred = tmp_path / "pred"
    pred.mkdir()
    np.save(pred / "f_score.npy", np.zeros((4, 4), np.float32))
    args = ["export_submission", f"--scores={pred}", f"--output_dir={tmp_path / 'sub'}", "--method=M"]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--dataset=ObstacleTrack-tset"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ObstacleTrack-tset" in err and "ObstacleTrack-test" in err
    assert not (tmp_path / "sub").exists()


def test_predict_writes_every_frame_once_with_the_values_of_its_own_region(tmp_path: Path) -> None:
    import lightning as L
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    from synthrel_lightning.data.collate import collate_samples

    root = tmp_path / "imgs"
    _image(root / "a" / "b.png", 40, 64, 0)
    _image(root / "a_b.png", 48, 64, 1)  # would share a file with a/b under a flattened name
    grey = np.random.default_rng(2).integers(0, 255, (32, 48), dtype=np.uint8)
    Image.fromarray(grey).save(root / "grey.png")  # one greyscale frame among colour ones
    torch.manual_seed(0)
    model = OODSegmenter(
        TinySegmenter(num_classes=19, width=4, depth=1),
        ood_score="msp",
        summary=False,
        prediction_dir=str(tmp_path / "p"),
    )
    dataset = FolderDataset(root, transform=eval_transform())
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_samples)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(model, loader, return_predictions=False)
    out = tmp_path / "p"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_score.npy")) == [
        "a/b_score.npy",
        "a_b_score.npy",
        "grey_score.npy",
    ]
    # Each saved map holds the scores of its frame's own region of the padded batch (top-left, as collated).
    model.eval()
    samples = [dataset[i] for i in range(len(dataset))]
    height = max(s["image"].shape[-2] for s in samples)
    width = max(s["image"].shape[-1] for s in samples)
    for sample in samples:
        h, w = sample["image"].shape[-2:]
        padded = F.pad(sample["image"], (0, width - w, 0, height - h))[None]
        with torch.no_grad():
            expected = model.score(model(padded))[0, :h, :w].numpy()
        saved = np.load(out / f"{sample['name']}_score.npy")
        np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-6)
        for kind in ("overlay", "heatmap"):
            visual = np.asarray(Image.open(out / f"{sample['name']}_{kind}.png"))
            assert visual.shape == (h, w, 3) and visual.dtype == np.uint8
    rgb = np.asarray(Image.open(root / "a_b.png"))
    overlay = np.asarray(Image.open(out / "a_b_overlay.png")).astype(int)
    assert 0 < np.abs(overlay - rgb).mean() < 128  # the frame shows through its overlay
