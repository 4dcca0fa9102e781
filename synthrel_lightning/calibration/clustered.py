"""Clustered temperature scaling: one temperature per k-means cluster of images, as relis computes it.

relis (de Jorge et al., CVPR 2023; https://github.com/naver/relis, ``compute_clusters_temp_scaling.py``
with ``clustering_helpers.py``; also GenVal's ``relis/`` folder):

1. per image, the feature of :func:`~synthrel_lightning.calibration.features.relis_features`;
2. ``sklearn.cluster.MiniBatchKMeans(n_clusters, batch_size=2048, n_init=5, random_state=seed)``
   fitted on the features, each image labelled with its nearest centre (``fit_predict``);
3. per cluster, the ECE grid search of temperature scaling (``[0.5, 10)`` step 0.01, 15 bins) on
   the sampled pixels of its images;
4. at test time an image gets the temperature of its nearest centre (``assignment="hard"``,
   relis' default), or the ``1 / (distance + 1e-6)``-weighted mean of the temperatures
   (``"soft"``, relis' ``soft_assignment_kmeans``).

With one cluster every image is in it: vanilla temperature scaling. Per-cluster fits use
:func:`~synthrel_lightning.calibration.temperature.fit_temperature` (``ece_grid``, the grid
extended beyond an edge its T lies on, as for the global fit). relis draws its 20,000 pixels per
image among all pixels and drops void ones; here they are drawn among labelled pixels
(:mod:`~synthrel_lightning.calibration.sampling`). The sampled pixels of every image are kept
in memory until the clusters are known (20,000 x K float32 per image, as relis' stacked logits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from synthrel_lightning.calibration.sampling import DEFAULT_PIXELS_PER_IMAGE, PixelsPerImage, frame_pixels
from synthrel_lightning.calibration.temperature import PAPER_GRID, TemperatureFit, fit_temperature

Assignment = Literal["hard", "soft"]

RELIS_KMEANS = {"batch_size": 2048, "n_init": 5}
"""relis' ``MiniBatchKMeans`` settings (``clustering_helpers.ClusteringOPS``)."""

RELIS_SEED = 111
"""relis' default seed (``compute_clusters_temp_scaling.py --seed``)."""


@dataclass(frozen=True)
class ClusteredTemperature:
    """Cluster centres and one temperature per cluster; maps image features to per-image temperatures."""

    centres: Tensor
    """(n_clusters, C) float64 k-means centres."""
    temperatures: Tensor
    """(n_clusters,) float64."""
    assignment: Assignment = "hard"
    feature_module: str | None = None
    """The backbone the features were read from (see :mod:`~synthrel_lightning.calibration.features`)."""

    def clusters(self, features: Tensor) -> Tensor:
        """The nearest centre of each row of ``features`` (B, C) (Euclidean, as ``KMeans.predict``)."""
        return torch.cdist(features.double(), self.centres.to(features.device).double()).argmin(dim=1)

    def image_temperatures(self, features: Tensor) -> Tensor:
        """Per-image temperatures (B,) float64 for features (B, C)."""
        temps = self.temperatures.to(features.device).double()
        if self.assignment == "hard":
            return temps[self.clusters(features)]
        weights = 1.0 / (torch.cdist(features.double(), self.centres.to(features.device).double()) + 1e-6)
        return (weights / weights.sum(dim=1, keepdim=True) * temps).sum(dim=1)

    def as_dict(self) -> dict[str, Any]:
        """Tensors and plain values (loads with ``torch.load(weights_only=True)``)."""
        return {
            "centres": self.centres.double().cpu(),
            "temperatures": self.temperatures.double().cpu(),
            "assignment": self.assignment,
            "feature_module": self.feature_module,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ClusteredTemperature:
        """Rebuild from :meth:`as_dict`."""
        return cls(
            torch.as_tensor(state["centres"], dtype=torch.float64),
            torch.as_tensor(state["temperatures"], dtype=torch.float64),
            state.get("assignment", "hard"),
            state.get("feature_module"),
        )


@dataclass(frozen=True)
class ClusteredFit:
    """A clustered temperature fit: the calibrator, each cluster's fit and the images per cluster."""

    calibrator: ClusteredTemperature
    fits: tuple[TemperatureFit, ...]
    sizes: tuple[int, ...]
    frames: int
    ece_before: float
    ece_after: float
    """Top-1 ECE of all sampled pixels at T = 1 and with each image's cluster temperature."""
    grid_notes: tuple[str, ...] = field(default=())


def kmeans_clusters(features: np.ndarray, n_clusters: int, seed: int = RELIS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """relis' clustering: ``MiniBatchKMeans(...).fit`` then ``predict``; (centres, labels)."""
    from sklearn.cluster import MiniBatchKMeans

    n = features.shape[0]
    if n_clusters < 1:
        raise ValueError(f"clustered temperature scaling: n_clusters must be >= 1, got {n_clusters}")
    if n_clusters > n:
        raise ValueError(
            f"clustered temperature scaling: n_clusters={n_clusters} is more than the {n} images of the "
            "calibration set; use at most as many clusters as images"
        )
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, **RELIS_KMEANS)
    km.fit(features)
    return np.asarray(km.cluster_centers_, dtype=np.float64), km.predict(features)


def fit_clustered_temperature(
    data: Iterable[tuple[Tensor, Tensor, Tensor]],
    n_clusters: int = 4,
    seed: int = RELIS_SEED,
    assignment: Assignment = "hard",
    grid: tuple[float, float, float] = PAPER_GRID,
    num_bins: int = 15,
    pixels_per_image: PixelsPerImage = DEFAULT_PIXELS_PER_IMAGE,
    pixel_seed: int = 0,
    extend_grid: bool = True,
    feature_module: str | None = None,
) -> ClusteredFit:
    """Fit one temperature per k-means cluster of images on ``(features (B,C), logits, target)`` batches.

    ``logits``/``target`` as for :func:`~synthrel_lightning.calibration.fit_temperature` (B frames
    per batch); ``features`` one row per frame. ``seed`` seeds k-means (relis: 111), ``pixel_seed``
    the per-frame pixel samples. More clusters than images is an error.
    """
    if assignment not in ("hard", "soft"):
        raise ValueError(f"clustered temperature scaling: assignment must be 'hard' or 'soft', got {assignment!r}")
    feats: list[Tensor] = []
    frames: list[tuple[Tensor, Tensor]] = []

    def pairs() -> Iterable[tuple[Tensor, Tensor]]:
        for b, (features, logits, target) in enumerate(data):
            n = logits.shape[0] if logits.ndim == 4 else 1
            if features.ndim != 2 or features.shape[0] != n:
                raise ValueError(f"calibration batch {b}: {n} frames but features of shape {tuple(features.shape)}")
            feats.append(features.detach().double().cpu())
            yield logits, target

    for frame in frame_pixels(pairs(), pixels_per_image, pixel_seed):
        frames.append((frame.logits.detach(), frame.target))
    if not frames:
        raise ValueError("clustered temperature scaling: the calibration set is empty")
    features = torch.cat(feats)
    # relis stacks the features in a float32 tensor before clustering
    centres, labels = kmeans_clusters(features.float().numpy(), n_clusters, seed)
    fits: list[TemperatureFit] = []
    for c in range(n_clusters):
        members = [frames[i] for i in np.flatnonzero(labels == c)]
        z = torch.cat([m[0] for m in members]) if members else frames[0][0][:0]
        y = torch.cat([m[1] for m in members]) if members else frames[0][1][:0]
        if y.numel() == 0:
            raise ValueError(f"clustered temperature scaling: cluster {c} holds no labelled pixel; use fewer clusters")
        fits.append(fit_temperature((z, y), method="ece_grid", grid=grid, num_bins=num_bins,
                                    pixels_per_image="all", extend_grid=extend_grid))  # fmt: skip
    calibrator = ClusteredTemperature(
        torch.from_numpy(centres), torch.tensor([f.temperature for f in fits], dtype=torch.float64),
        assignment, feature_module,
    )  # fmt: skip
    per_image = calibrator.image_temperatures(features)
    z_all = torch.cat([f[0] for f in frames])
    y_all = torch.cat([f[1] for f in frames])
    t_all = torch.cat([per_image[i].expand(f[1].numel()) for i, f in enumerate(frames)]).to(z_all)
    from synthrel_lightning.calibration.temperature import expected_calibration_error

    before = expected_calibration_error(z_all, y_all, num_bins)
    after = expected_calibration_error(z_all / t_all.unsqueeze(1), y_all, num_bins)
    notes = tuple(f"cluster {c}: {note}" for c, f in enumerate(fits) for note in f.grid_notes)
    return ClusteredFit(
        calibrator, tuple(fits), tuple(int((labels == c).sum()) for c in range(n_clusters)), len(frames),
        before, after, notes,
    )  # fmt: skip


__all__ = [
    "RELIS_KMEANS",
    "RELIS_SEED",
    "Assignment",
    "ClusteredFit",
    "ClusteredTemperature",
    "fit_clustered_temperature",
    "kmeans_clusters",
]
