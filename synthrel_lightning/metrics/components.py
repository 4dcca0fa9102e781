"""Component-level OOD metrics (sIoU, PPV, mean F1) with the SegmentMeIfYouCan definitions.

Per frame, following the official benchmark code:

1. Prediction: ``score >= threshold`` (default, ``inclusive=True``) or the official
   code's ``score > threshold`` (``inclusive=False``), zeroed on void pixels; ground
   truth: ``target == 1``. Connected components of both with
   8-connectivity (``scipy.ndimage.label`` with a 3x3 structure of ones).
2. Predicted components smaller than ``min_pred_size`` are dropped; ground-truth
   components smaller than ``min_gt_size`` become void (anomaly track: 500 / 100
   px, obstacle track: 50 / 10 px). All counts below are over the remaining
   region of interest (non-void pixels).
3. sIoU of ground-truth component k: ``|k ∩ P| / (|k ∪ P| - |A|)`` with P the
   union of predicted components that intersect k and A the pixels of P that
   lie in other ground-truth components. sIoU of a predicted component is the
   symmetric quantity. PPV of predicted component p: ``|p ∩ GT| / |p|``.
4. For tau in ``linspace(0.25, 0.75, 11)``: TP = #GT with sIoU >= tau, FN = #GT
   with sIoU < tau, FP = #pred with PPV < tau, pooled over the dataset;
   ``F1(tau) = 2TP / (2TP + FN + FP)``; ``mean_f1`` is the mean over tau.
   ``siou`` and ``ppv`` are the means over all pooled components.

The comparison is exact: scores in float16 / bfloat16 are upcast to float32 and
the threshold stays a float64 (never rounded to the scores' precision). The default
``>=`` is the meaning of ``PixelOODMetrics``' ``best_f1_threshold`` (the pixels at or
above it are the best-F1 prediction), so the components are those of the pixel
metric's operating point; with ``inclusive=False`` pixels exactly at the threshold
are left out, as in the official code.

``aggregation="official"``: the benchmark's own comparison, ``score > threshold`` on the scores
rounded to float16 (its score files) with the threshold rounded to float16 too (numpy compares a
float16 array with a Python float in float16); use it with the ``best_f1_threshold`` of
``PixelOODMetrics(aggregation="official")`` to reproduce the leaderboard's component numbers.

A value that is NaN because no component of valid size exists (no ground-truth component of
``min_gt_size`` pixels, no predicted one of ``min_pred_size`` pixels) comes with a warning,
once per cause, that says so.

The threshold: SMIYC uses the pixel-level best-F1 threshold, known only after a
pass over the whole dataset. This metric is exact, so the threshold must be known
before frames are scored. Three ways:

* fixed by the user (``threshold=``);
* two passes: ``PixelOODMetrics`` (pass 1, ``best_f1_threshold``) ->
  ``ComponentMetrics.set_threshold`` -> ``update`` (pass 2);
* one pass with ``defer=True``: ``update`` before a threshold is set keeps the
  frames (scores float32 on the CPU, float64 kept as float64, targets uint8: 5
  bytes per pixel, on each process), and ``set_threshold`` (after the pixel pass, with the same value on
  every process) scores them and releases them. Same values as two passes.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from synthrel_lightning.labels import VOID_ID
from synthrel_lightning.metrics._checks import check_binary_inputs
from synthrel_lightning.metrics.official import check_aggregation

SIOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.25, 0.75, 11, endpoint=True))
"""The 11 sIoU/PPV thresholds tau of the benchmark."""

TRACK_SIZES: dict[str, tuple[int, int]] = {"anomaly": (500, 100), "obstacle": (50, 10)}
"""(min predicted component size, min ground-truth component size) in pixels per SMIYC track."""

_STRUCTURE = np.ones((3, 3), dtype=np.uint8)


def frame_component_stats(
    pred: np.ndarray, target: np.ndarray, min_pred_size: int, min_gt_size: int, ignore_index: int = VOID_ID
) -> dict[str, np.ndarray]:
    """sIoU of each GT component, sIoU and PPV of each predicted component, for one frame.

    ``pred``: (H, W) bool, the thresholded score map; ``target``: (H, W) ints with
    0 / 1 / ``ignore_index``. Returns float64 arrays ``siou_gt``, ``siou_pred``, ``ppv``.
    """
    from scipy import ndimage

    void = target == ignore_index
    gt_inst, n_gt = ndimage.label(target == 1, structure=_STRUCTURE)
    pred_inst, n_pred = ndimage.label(pred & ~void, structure=_STRUCTURE)

    # the official code loops over labels 0..n (background included) with a strict "<"
    pred_size = np.bincount(pred_inst.ravel(), minlength=n_pred + 1)
    keep_pred = pred_size >= min_pred_size
    keep_pred[0] = False
    pred_inst = np.where(keep_pred[pred_inst], pred_inst, 0)
    gt_size = np.bincount(gt_inst.ravel(), minlength=n_gt + 1)
    roi = ~void & ~(gt_size < min_gt_size)[gt_inst]

    g = gt_inst[roi].astype(np.int64)
    p = pred_inst[roi].astype(np.int64)
    gsize = np.bincount(g, minlength=n_gt + 1).astype(np.float64)
    psize = np.bincount(p, minlength=n_pred + 1).astype(np.float64)
    both = (g > 0) & (p > 0)
    pairs, pair_count = np.unique(g[both] * (n_pred + 1) + p[both], return_counts=True)
    pi, pj = pairs // (n_pred + 1), pairs % (n_pred + 1)
    pair_count = pair_count.astype(np.float64)
    inter_g = np.bincount(pi, weights=pair_count, minlength=n_gt + 1)  # |k ∩ preds|
    inter_p = np.bincount(pj, weights=pair_count, minlength=n_pred + 1)  # |p ∩ GTs|

    gt_ids = np.nonzero(gsize[1:])[0] + 1
    pred_ids = np.nonzero(psize[1:])[0] + 1

    # GT side: P = preds touching k; |P| and the GT pixels of P (|A| = those minus k ∩ P)
    p_union = np.bincount(pi, weights=psize[pj], minlength=n_gt + 1)
    p_on_gt = np.bincount(pi, weights=inter_p[pj], minlength=n_gt + 1)
    inter = inter_g[gt_ids]
    adjustment = p_on_gt[gt_ids] - inter
    siou_gt = inter / (p_union[gt_ids] + gsize[gt_ids] - inter - adjustment)

    # prediction side, the mirror image
    g_union = np.bincount(pj, weights=gsize[pi], minlength=n_pred + 1)
    g_on_pred = np.bincount(pj, weights=inter_g[pi], minlength=n_pred + 1)
    inter = inter_p[pred_ids]
    adjustment = g_on_pred[pred_ids] - inter
    siou_pred = inter / (g_union[pred_ids] + psize[pred_ids] - inter - adjustment)
    ppv = inter / psize[pred_ids]
    return {"siou_gt": siou_gt, "siou_pred": siou_pred, "ppv": ppv}


def predicted_mask(scores: Tensor, threshold: float, inclusive: bool = True) -> Tensor:
    """``scores >= threshold`` (``>`` unless ``inclusive``), exact for any score dtype and float64 threshold.

    Half-precision scores are compared in float32; for float32 scores the float64
    threshold is replaced by the float32 value that gives the same comparison (a
    plain ``scores >= threshold`` would round it to the scores' precision).
    """
    bound: Tensor | float = threshold
    if scores.dtype != torch.float64:
        scores = scores.float()
        t32 = torch.tensor(threshold, dtype=torch.float64).float()
        if inclusive and float(t32) < threshold:  # the smallest float32 >= threshold
            t32 = torch.nextafter(t32, t32.new_tensor(math.inf))
        elif not inclusive and float(t32) > threshold:  # the largest float32 <= threshold
            t32 = torch.nextafter(t32, t32.new_tensor(-math.inf))
        bound = t32.to(scores.device)
    return scores >= bound if inclusive else scores > bound


class ComponentMetrics(Metric):
    """Streaming SMIYC component metrics: ``siou``, ``ppv``, ``siou_pred``, ``mean_f1``, ``f1_25/50/75``.

    ``update(scores, target)``: scores float ``(H, W)`` or ``(N, H, W)`` (one frame
    per leading index), target of the same shape with 0 / 1 / ``ignore_index``.
    The threshold must be known before ``update``, or, with ``defer=True``, before
    ``compute`` (see the module docstring). States are pooled counts and sums (``sum`` reduction).
    Means over zero components and F1 with no component at all are NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    tp: Tensor
    fn: Tensor
    fp: Tensor
    n_gt: Tensor
    n_pred: Tensor
    siou_gt_sum: Tensor
    siou_pred_sum: Tensor
    ppv_sum: Tensor

    def __init__(
        self,
        track: Literal["anomaly", "obstacle"] = "anomaly",
        threshold: float | None = None,
        min_pred_size: int | None = None,
        min_gt_size: int | None = None,
        inclusive: bool = True,
        ignore_index: int = VOID_ID,
        defer: bool = False,
        aggregation: Literal["exact", "official"] = "exact",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.aggregation = check_aggregation(aggregation, "ComponentMetrics")
        if aggregation == "official":
            inclusive = False  # the benchmark predicts score > threshold on its float16 maps
        self._warned_nan: set[str] = set()
        self.defer = bool(defer)
        self._pending: list[tuple[Tensor, Tensor]] = []
        if track not in TRACK_SIZES:
            raise ValueError(f"ComponentMetrics: track must be one of {sorted(TRACK_SIZES)}, got {track!r}")
        default_pred, default_gt = TRACK_SIZES[track]
        self.track = track
        self.min_pred_size = int(default_pred if min_pred_size is None else min_pred_size)
        self.min_gt_size = int(default_gt if min_gt_size is None else min_gt_size)
        if self.min_pred_size < 0 or self.min_gt_size < 0:
            raise ValueError(f"ComponentMetrics: min sizes must be >= 0, got {self.min_pred_size}, {self.min_gt_size}")
        self.inclusive = bool(inclusive)
        self.ignore_index = int(ignore_index)
        self.threshold: float | None = None
        if threshold is not None:
            self.set_threshold(threshold)
        n_tau = len(SIOU_THRESHOLDS)
        for name in ("tp", "fn", "fp"):
            self.add_state(name, default=torch.zeros(n_tau, dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("n_gt", "n_pred"):
            self.add_state(name, default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("siou_gt_sum", "siou_pred_sum", "ppv_sum"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def set_threshold(self, threshold: float) -> None:
        """Set the score threshold (e.g. ``PixelOODMetrics``' ``best_f1_threshold``); scores deferred frames with it."""
        threshold = float(threshold)
        if math.isnan(threshold):
            raise ValueError("ComponentMetrics: threshold is NaN")
        self.threshold = threshold
        pending, self._pending = self._pending, []
        for scores, target in pending:
            self._accumulate(scores, target)

    @property
    def pending_frames(self) -> int:
        """Frames kept by ``defer=True`` until a threshold is set."""
        return sum(scores.shape[0] for scores, _ in self._pending)

    def update(self, scores: Tensor, target: Tensor) -> None:
        """Add frames: scores ``(H, W)`` or ``(N, H, W)`` and binary targets (0 / 1 / ignore_index)."""
        if self.threshold is None and not self.defer:
            raise RuntimeError(
                "ComponentMetrics: no threshold set. Pass threshold= or call set_threshold(t) before update "
                "(or construct with defer=True to keep the frames until then); SMIYC uses PixelOODMetrics' "
                "best_f1_threshold from a first pass over the data"
            )
        target, _ = check_binary_inputs(scores, target, self.ignore_index, type(self).__name__)
        if scores.ndim == 2:
            scores, target = scores[None], target[None]
        if scores.ndim != 3:
            raise ValueError(f"ComponentMetrics: scores must be (H, W) or (N, H, W), got {tuple(scores.shape)}")
        if self.threshold is None:
            small = torch.uint8 if 0 <= self.ignore_index <= 255 else torch.int64
            kept = scores.detach() if scores.dtype == torch.float64 else scores.detach().float()
            self._pending.append((kept.cpu(), target.detach().to("cpu", small)))
            return
        self._accumulate(scores, target)

    def _accumulate(self, scores: Tensor, target: Tensor) -> None:
        assert self.threshold is not None
        # threshold on the device; only the boolean masks travel to the CPU for scipy
        threshold = self.threshold
        if self.aggregation == "official":  # float16 scores compared with the threshold in float16, as numpy does
            scores, threshold = scores.half(), float(np.float16(threshold))
        pred = predicted_mask(scores, threshold, self.inclusive)
        pred_np = pred.cpu().numpy()
        target_np = target.cpu().numpy()
        taus = np.asarray(SIOU_THRESHOLDS)
        tp = np.zeros(len(taus), dtype=np.int64)
        fn = np.zeros_like(tp)
        fp = np.zeros_like(tp)
        sums = np.zeros(3)
        n_gt = n_pred = 0
        for frame_pred, frame_target in zip(pred_np, target_np):
            st = frame_component_stats(
                frame_pred, frame_target, self.min_pred_size, self.min_gt_size, self.ignore_index
            )
            tp += (st["siou_gt"][:, None] >= taus).sum(0)
            fn += (st["siou_gt"][:, None] < taus).sum(0)
            fp += (st["ppv"][:, None] < taus).sum(0)
            sums += [st["siou_gt"].sum(), st["siou_pred"].sum(), st["ppv"].sum()]
            n_gt += len(st["siou_gt"])
            n_pred += len(st["ppv"])
        device = self.tp.device
        self.tp += torch.from_numpy(tp).to(device)
        self.fn += torch.from_numpy(fn).to(device)
        self.fp += torch.from_numpy(fp).to(device)
        self.n_gt += n_gt
        self.n_pred += n_pred
        self.siou_gt_sum += float(sums[0])
        self.siou_pred_sum += float(sums[1])
        self.ppv_sum += float(sums[2])

    def reset(self) -> None:
        """Clear the pooled counts and any deferred frames (the threshold is kept)."""
        super().reset()
        self._pending = []

    def compute(self) -> dict[str, Tensor]:
        """Pooled ``siou``, ``siou_pred``, ``ppv``, ``mean_f1`` and ``f1_25``, ``f1_50``, ``f1_75``."""
        if self._pending:
            raise RuntimeError(
                f"ComponentMetrics: {self.pending_frames} deferred frame(s) wait for a threshold; call "
                "set_threshold(PixelOODMetrics(...).compute()['best_f1_threshold']) before compute()"
            )
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.tp.device)
        n_gt, n_pred = self.n_gt.double(), self.n_pred.double()
        self._explain_nan(int(n_gt), int(n_pred))
        denom = (2 * self.tp + self.fn + self.fp).double()
        f1 = torch.where(denom > 0, 2 * self.tp.double() / denom.clamp_min(1), nan)
        out = {
            "siou": self.siou_gt_sum / n_gt if n_gt > 0 else nan,
            "siou_pred": self.siou_pred_sum / n_pred if n_pred > 0 else nan,
            "ppv": self.ppv_sum / n_pred if n_pred > 0 else nan,
            "mean_f1": f1.mean(),
        }
        for i, tau in enumerate(SIOU_THRESHOLDS):
            pct = int(round(tau * 100))
            if pct in (25, 50, 75):
                out[f"f1_{pct}"] = f1[i]
        return out

    def _explain_nan(self, n_gt: int, n_pred: int) -> None:
        """Warn once per cause when a value is NaN because no component of valid size was found."""
        causes = {
            "gt": (
                n_gt == 0,
                f"no ground-truth OOD component of at least min_gt_size={self.min_gt_size} px (smaller ones are "
                "void): siou, and the F1 values unless there are predicted components, are NaN",
            ),
            "pred": (
                n_pred == 0,
                f"no predicted component of at least min_pred_size={self.min_pred_size} px at threshold "
                f"{self.threshold} (score {'>=' if self.inclusive else '>'} threshold): siou_pred and ppv are NaN",
            ),
        }
        for key, (happened, reason) in causes.items():
            if happened and key not in self._warned_nan:
                self._warned_nan.add(key)
                warnings.warn(f"ComponentMetrics ({self.track} track): {reason}", stacklevel=3)

    def extra_repr(self) -> str:
        return (
            f"aggregation={self.aggregation!r}, track={self.track!r}, "
            f"threshold={self.threshold}, min_pred_size={self.min_pred_size}, "
            f"min_gt_size={self.min_gt_size}, inclusive={self.inclusive}, defer={self.defer}"
        )
