"""Per-frame additive statistics of an evaluation, from which a set's metrics are recomputed on any subset of frames.

:class:`FrameStatistics` is a Lightning callback that reads the
:class:`~synthrel_lightning.evaluation_result.EvaluationResult` each evaluation step
returns (nothing runs the model a second time) and keeps, per frame of the chosen sets:
the (K, K) confusion matrix (mIoU), the top-1 calibration bin sums (ECE) and a histogram
of the OOD score (AP, AUROC, FPR95). Summing the statistics of any subset of frames and
applying the metric's reducer gives the dataset-level metric of that subset, as the
subsampling curve needs. :data:`FRAME_REDUCERS` says which metrics can be recomputed so;
the arithmetic is that of :mod:`synthrel_lightning.metrics.functional`, shared with the
metric classes, so the full set's value from frames equals the logged one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.metrics.functional import ece_from_bins, miou_from_confusion, pixel_ood_from_histograms

FrameReducer = Callable[[np.ndarray], float]
"""Maps the sum of per-frame statistics over a subset of frames to the metric value."""


def _ood(metric: str) -> FrameReducer:
    return lambda hist: pixel_ood_from_histograms(hist)[metric]


FRAME_REDUCERS: dict[str, tuple[str, FrameReducer]] = {
    "miou": ("confusion", miou_from_confusion),
    "ece": ("calibration_bins", ece_from_bins),
    "ap": ("ood_hist", _ood("ap")),
    "auroc": ("ood_hist", _ood("auroc")),
    "fpr95": ("ood_hist", _ood("fpr95")),
}
"""Metrics recomputable from per-frame statistics: metric -> (statistic kept per frame, reducer of its sum)."""


def reducer_for(metric: str) -> FrameReducer:
    """The reducer that turns summed per-frame statistics into ``metric``."""
    if metric not in FRAME_REDUCERS:
        raise ValueError(f"no per-frame reducer for metric {metric!r}; supported: {', '.join(FRAME_REDUCERS)}")
    return FRAME_REDUCERS[metric][1]


def statistic_for(metric: str) -> str:
    """The per-frame statistic ``metric`` is recomputed from."""
    reducer_for(metric)
    return FRAME_REDUCERS[metric][0]


class FrameStatistics(Callback):
    """Lightning callback keeping additive per-frame statistics of chosen evaluation sets.

    It reads the :class:`~synthrel_lightning.evaluation_result.EvaluationResult` returned
    by ``validation_step``. The OOD histogram uses ``ood_bins`` bins on
    ``0.5 + 0.5 tanh((s - c) / 2w)`` with c, w the median and spread of the set's first
    batch: a rank-preserving map, so the metrics are the dataset-level definitions up to
    the bin resolution (the exactly computed full-set value is logged beside them).

    Args:
        sets: set name -> metrics wanted on it (keys of :data:`FRAME_REDUCERS`; others are ignored).
        num_classes: K of the confusion matrices.
        ece_bins: equal-width top-1 calibration bins (the module's ``calibration_bins``).
        ood_bins: bins of the OOD score histograms.
    """

    def __init__(
        self, sets: Mapping[str, Sequence[str]], num_classes: int = 19, ece_bins: int = 15, ood_bins: int = 4096
    ) -> None:
        super().__init__()
        self.sets = {k: {statistic_for(m) for m in v if m in FRAME_REDUCERS} for k, v in sets.items()}
        self.num_classes = int(num_classes)
        self.ece_bins = int(ece_bins)
        self.ood_bins = int(ood_bins)
        self.stats: dict[str, dict[str, list[np.ndarray]]] = {}
        self.names: dict[str, list[str]] = {}
        self._squash: dict[str, tuple[float, float]] = {}

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Add the per-frame statistics of one evaluation batch."""
        from synthrel_lightning.evaluation_result import EvaluationResult

        if trainer.sanity_checking:
            return
        if not isinstance(outputs, EvaluationResult):
            raise TypeError(
                f"FrameStatistics: {type(pl_module).__name__}.validation_step returned {type(outputs).__name__}; "
                "it must return an EvaluationResult (synthrel_lightning.evaluation_result), as OODSegmenter does"
            )
        wanted = self.sets.get(outputs.set_name)
        if not wanted:
            return
        store = self.stats.setdefault(outputs.set_name, {})
        size = outputs.logits.shape[0]
        names = outputs.names or [f"{batch_idx}_{i}" for i in range(size)]
        self.names.setdefault(outputs.set_name, []).extend(str(n) for n in names)
        if outputs.label is not None and wanted & {"confusion", "calibration_bins"}:
            for stat, frames in self._label_statistics(outputs.logits, outputs.label).items():
                store.setdefault(stat, []).extend(frames)
        if outputs.ood is not None and "ood_hist" in wanted:
            store.setdefault("ood_hist", []).extend(self._ood_histograms(outputs.set_name, outputs.score, outputs.ood))

    def _label_statistics(self, logits: Any, label: Any) -> dict[str, list[np.ndarray]]:
        import torch

        from synthrel_lightning.metrics.functional import top1_bin_sums

        k = self.num_classes
        # As CalibrationMetrics: top-1 confidence from the float32 log-softmax.
        log_conf, pred = logits.float().log_softmax(1).max(1)
        conf = log_conf.exp()
        out: dict[str, list[np.ndarray]] = {"confusion": [], "calibration_bins": []}
        for i in range(logits.shape[0]):
            valid = label[i] < k
            t, p = label[i][valid].long(), pred[i][valid]
            out["confusion"].append(torch.bincount(t * k + p, minlength=k * k).reshape(k, k).cpu().numpy())
            out["calibration_bins"].append(top1_bin_sums(conf[i][valid], p == t, self.ece_bins).cpu().numpy())
        return out

    def _ood_histograms(self, set_name: str, score: Any, ood: Any) -> list[np.ndarray]:
        import torch

        score = score.float()
        if set_name not in self._squash:
            valid_all = score[ood != 255]
            med = float(valid_all.median()) if valid_all.numel() else 0.0
            spread = float(valid_all.std()) if valid_all.numel() > 1 else 1.0
            self._squash[set_name] = (med, spread if spread > 0 else 1.0)
        c0, w = self._squash[set_name]
        out = []
        for i in range(score.shape[0]):
            m = ood[i] != 255
            t = 0.5 + 0.5 * torch.tanh((score[i][m] - c0) / (2.0 * w))
            b = (t.double() * self.ood_bins).long().clamp_(0, self.ood_bins - 1)
            pos = ood[i][m] == 1
            hist = torch.stack(
                [torch.bincount(b[~pos], minlength=self.ood_bins), torch.bincount(b[pos], minlength=self.ood_bins)]
            )
            out.append(hist.cpu().numpy())
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<set>__<statistic>": (F, ...) array, "<set>__names": names}`` for saving with numpy."""
        out: dict[str, np.ndarray] = {}
        for set_name, stats in self.stats.items():
            out[f"{set_name}__names"] = np.asarray(self.names[set_name])
            for stat, frames in stats.items():
                out[f"{set_name}__{stat}"] = np.stack(frames)
        return out


def save_frame_stats(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Save per-frame statistics atomically as .npz."""
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))  # type: ignore[arg-type]  # numpy's stub: a ** mapping might hold allow_pickle


def load_frame_stats(path: str | Path, set_name: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frame names, (F, ...) statistics)`` of ``metric`` on ``set_name`` from a saved file (None if absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as z:
        k_stat, k_names = f"{set_name}__{statistic_for(metric)}", f"{set_name}__names"
        if k_stat in z and k_names in z:
            return z[k_names], z[k_stat]
    return None


__all__ = [
    "FRAME_REDUCERS",
    "FrameReducer",
    "FrameStatistics",
    "load_frame_stats",
    "reducer_for",
    "save_frame_stats",
    "statistic_for",
]
