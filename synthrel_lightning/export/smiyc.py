"""SegmentMeIfYouCan submissions: one HDF5 file of anomaly scores per frame.

The benchmark's code (github.com/SegmentMeIfYouCan/road-anomaly-benchmark,
``road_anomaly_benchmark/evaluation.py``) stores and reads a method's output for frame
``fid`` at ``<DIR_OUTPUTS>/anomaly_p/<method_name>/<dset_name>/<fid>.hdf5``: an HDF5 file
holding the (H, W) score map (higher = more anomalous, at the image's own size) as float16
in the dataset ``value``, gzip-compressed (level 9). ``dset_name`` is not always the
dataset's registry name: ``DatasetBase.get_frame`` (``datasets/dataset_io.py``) uses the
config's ``name_for_persistence`` when set, and the subset datasets of ``tracks_extra.py``
hand frames to a parent dataset. So AnomalyTrack-test and -validation frames live in
``AnomalyTrack-all/``, every ObstacleTrack split in ``ObstacleTrack-all/``, and
LostAndFound-testNoKnown in ``LostAndFound-test/`` (:data:`SMIYC_FOLDERS`). Pointing the
benchmark's ``DIR_OUTPUTS`` at the folder written here lets its ``metric`` command evaluate
the scores, and the folder is what the leaderboard's submission archive holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.paths import check_name, path_within

__all__ = [
    "SMIYC_DATASETS",
    "SMIYC_FOLDERS",
    "smiyc_folder",
    "smiyc_path",
    "write_smiyc_score",
    "read_smiyc_score",
    "export_smiyc",
    "export_smiyc_folder",
]

_OBSTACLE_SPLITS = ("test", "all", "noNight", "night", "snowstorm", "validation")
_OBSTACLE_SCENES = (
    "curvy",
    "darkasphalt",
    "darkasphaltDog",
    "darkasphaltAll",
    "gravel",
    "greyasphalt",
    "motorway",
    "shiny",
    "paving",
    "night",
    "snowstorm",
    "validation",
)
SMIYC_FOLDERS: dict[str, str] = {
    **{f"AnomalyTrack-{s}": "AnomalyTrack-all" for s in ("all", "test", "validation", "animals", "vehicles", "other")},
    **{f"ObstacleTrack-{s}": "ObstacleTrack-all" for s in _OBSTACLE_SPLITS},
    **{f"ObstacleScene-{s}": "ObstacleTrack-all" for s in _OBSTACLE_SCENES},
    **{f"Erasing-{s}": "ObstacleTrack-all" for s in ("20", "20nodog", "21")},
    **{f"LostAndFound-{s}": "LostAndFound-train" for s in ("train", "trainValid", "anomalyTrain")},
    **{f"LostAndFound-{s}": "LostAndFound-test" for s in ("test", "testValid", "testNoKnown", "anomalyTest")},
    **{name: name for name in ("RoadObstacleWeather-v1", "RoadObstacleExtra-v1")},
    **{f"SmallObstacleDataset-{s}": f"SmallObstacleDataset-{s}" for s in ("train", "test", "val")},
}
"""Benchmark dataset name -> the folder its frames' score files live in (the benchmark's ``dset_name``).

The Fishyscapes subsets (``FishyLAF*``) are left out: the benchmark reads each of their frames
from LostAndFound-train or LostAndFound-test depending on the frame, so export those frames
under the matching LostAndFound name.
"""

SMIYC_DATASETS: tuple[str, ...] = tuple(SMIYC_FOLDERS)
"""Dataset names of the benchmark's registry that an export accepts."""

_VAR = "value"


def smiyc_folder(dataset: str) -> str:
    """The folder the benchmark reads ``dataset``'s score files from; an unknown name raises ``ValueError``."""
    try:
        return SMIYC_FOLDERS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown SegmentMeIfYouCan dataset {dataset!r}; expected one of: {', '.join(SMIYC_DATASETS)}"
        ) from None


def smiyc_path(output_dir: str | os.PathLike[str], method: str, dataset: str, fid: str) -> Path:
    """Where the benchmark looks for frame ``fid``: ``output_dir/anomaly_p/<method>/<folder>/<fid>.hdf5``.

    ``<folder>`` is ``dataset``'s persistence folder (:func:`smiyc_folder`), e.g. ``AnomalyTrack-all``
    for ``AnomalyTrack-test``.
    """
    folder = Path(output_dir) / "anomaly_p" / check_name(method, "method name") / smiyc_folder(dataset)
    return path_within(folder, f"{check_name(fid, 'frame id')}.hdf5", what="frame id")


def write_smiyc_score(path: str | os.PathLike[str], score: np.ndarray) -> Path:
    """Write one (H, W) score map as the benchmark stores it (float16 ``value``, gzip 9), atomically."""
    import h5py

    arr = np.asarray(score)
    if arr.ndim != 2:
        raise ValueError(f"SMIYC export: a score map must be (H, W), got shape {arr.shape} for {path}")
    if not np.isfinite(arr).all():
        raise ValueError(f"SMIYC export: the score map for {path} holds NaN or infinite values")

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(_VAR, data=arr.astype(np.float16), compression=9)

    return atomic_write(path, write)


def read_smiyc_score(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a score map the way the benchmark does (``value`` of the HDF5 file, squeezed)."""
    import h5py

    with h5py.File(path, "r") as f:
        if _VAR not in f:
            raise KeyError(f"SMIYC file {path} has no {_VAR!r} dataset (keys: {list(f.keys())})")
        return np.squeeze(f[_VAR][:])


def export_smiyc(
    scores: Iterable[tuple[str, np.ndarray]],
    output_dir: str | os.PathLike[str],
    method: str,
    dataset: str = "AnomalyTrack-test",
) -> list[Path]:
    """Write every ``(frame id, (H, W) score map)`` as the benchmark's per-frame file; returns the paths.

    Frame ids are the image file names without extension (``SMIYCDataset`` and
    ``FolderDataset`` over the track's ``images/`` folder name frames this way).
    """
    smiyc_folder(dataset)
    written = []
    for fid, score in scores:
        written.append(write_smiyc_score(smiyc_path(output_dir, method, dataset, fid), score))
    if not written:
        raise ValueError(f"SMIYC export: no score maps given for {method}/{dataset}")
    return written


def export_smiyc_folder(
    scores: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    method: str,
    dataset: str = "AnomalyTrack-test",
    suffix: str = "_score.npy",
) -> list[Path]:
    """Convert the ``<fid><suffix>`` score maps ``predict`` wrote under ``scores`` into a SMIYC submission.

    Args:
        scores: folder of NumPy (H, W) score maps, one per frame (``predict``'s prediction folder, searched
            recursively; a frame's id is its file name without ``suffix``).
        output_dir: the submission folder (the benchmark's ``DIR_OUTPUTS``); files go to
            ``output_dir/anomaly_p/<method>/<folder>/<fid>.hdf5``, ``<folder>`` the dataset's persistence
            folder (``AnomalyTrack-all`` for ``AnomalyTrack-test``, see :data:`SMIYC_FOLDERS`).
        method: the method name shown by the benchmark.
        dataset: the benchmark dataset the frames belong to (e.g. ``AnomalyTrack-test``, ``ObstacleTrack-test``,
            ``LostAndFound-testNoKnown``); unknown names are refused.
        suffix: ending of the score files after the frame id.
    """
    smiyc_folder(dataset)
    folder = Path(scores)
    if not folder.is_dir():
        raise FileNotFoundError(f"SMIYC export: score folder {folder} does not exist; run predict first")
    files = sorted(p for p in folder.rglob(f"*{suffix}") if p.is_file())
    seen: dict[str, Path] = {}
    for path in files:  # predict mirrors sub-folders; the benchmark names frames by file name alone
        other = seen.setdefault(path.name, path)
        if other != path:
            raise ValueError(f"SMIYC export: {other} and {path} would both be frame {path.name[: -len(suffix)]!r}")
    if not files:
        raise FileNotFoundError(f"SMIYC export: no '*{suffix}' score maps in {folder}; run predict into this folder")

    def load(path: Path) -> tuple[str, np.ndarray]:
        try:
            return path.name[: -len(suffix)], np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"SMIYC export: cannot read score map {path}: {exc}") from exc

    return export_smiyc((load(p) for p in files), output_dir, method, dataset)
