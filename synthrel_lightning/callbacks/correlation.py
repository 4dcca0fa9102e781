"""Tracks, across validations (and sweep runs), how a synthetic-set metric correlates with its real counterpart."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.correlation.pairs import pair_key
from synthrel_lightning.correlation.statistics import INTERVALS, METHODS, MIN_POINTS, Correlation, correlate_pairs

log = logging.getLogger(__name__)

__all__ = ["MetricCorrelation", "log_figure"]


def _strip_dataloader_suffix(key: str) -> str:
    head, sep, tail = key.rpartition("/dataloader_idx_")
    return head if sep and tail.isdigit() else key


def _metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    for k, v in metrics.items():
        if k == key or _strip_dataloader_suffix(k) == key:
            return float(v.item() if isinstance(v, torch.Tensor) else v)
    return None


def log_figure(trainer: L.Trainer, tag: str, fig: Any, fallback_dir: str | Path | None = None) -> list[str]:
    """Send a matplotlib figure to every logger that takes images (TensorBoard, wandb); PNG in the log dir otherwise.

    Returns where it went: ``"tensorboard"``, ``"wandb"``, or the PNG's path (SVG and PDF are written beside it).
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    from synthrel_lightning.figures import figure_to_array, save_figure

    sent: list[str] = []
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, fig, global_step=step, close=False)
            sent.append("tensorboard")
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[figure_to_array(fig)], step=None)
            sent.append("wandb")
    if not sent:
        log_dir = getattr(trainer.loggers[0], "log_dir", None) if trainer.loggers else None
        root = fallback_dir or log_dir or trainer.default_root_dir
        safe = tag.replace("/", "_").replace("~", "-")
        sent.append(str(save_figure(fig, Path(root) / "plots" / f"{safe}_step{step:06d}.png")[0]))
    return sent


class MetricCorrelation(Callback):
    """After each validation, records (synthetic, real) metric pairs and logs their correlations and a scatter plot.

    ``pairs`` entries are ``{"synthetic": set, "real": set, "metric": name}`` (``metrics``:
    list also accepted), read from ``trainer.callback_metrics[f"{stage}/{set}/{metric}"]``.
    Each validation adds one point per pair; coefficients (``corr/{synthetic}~{real}/{metric}/{method}``
    and ``.../{method}_ci_low|high``) are logged once there are at least 3 points. The
    history lives in the checkpoint (``state_dict``) and, when ``history_path`` is given,
    in a JSON file rewritten atomically after each validation, so the files of several
    sweep runs can be pooled with :func:`synthrel_lightning.correlation.histories.pool_histories`.
    Coefficients, p-values and intervals are those of
    :func:`synthrel_lightning.correlation.statistics.correlate_pairs` (``interval`` chooses the interval).

    Points from successive epochs of one run are not independent samples; pooled
    histories across runs (e.g. a sweep's final validations) are the meaningful use.
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, Any]],
        stage: str = "val",
        history_path: str | None = None,
        bootstrap: int = 1000,
        ci: float = 0.95,
        methods: Sequence[str] = METHODS,
        interval: str = "auto",
        log_plot: bool = True,
        run_id: str | None = None,
    ) -> None:
        super().__init__()
        self.pairs = self._normalise_pairs(pairs)
        self.stage = stage
        self.history_path = history_path
        self.bootstrap = int(bootstrap)
        self.ci = float(ci)
        self.methods = tuple(methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"MetricCorrelation: unknown methods {bad}; expected some of {METHODS}")
        if interval not in INTERVALS:
            raise ValueError(f"MetricCorrelation: unknown interval {interval!r}; expected one of {INTERVALS}")
        self.interval = interval
        self.log_plot = log_plot
        self.run_id = run_id or os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8]
        self.records: list[dict[str, Any]] = []
        self._checked = False
        self._said_waiting = False
        self.last_correlations: dict[str, dict[str, Correlation]] = {}

    @staticmethod
    def _normalise_pairs(pairs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        if not pairs:
            raise ValueError(
                "MetricCorrelation: pairs is empty; "
                "give e.g. [{synthetic: synthetic_fog, real: acdc_fog, metric: miou}]"
            )
        for p in pairs:
            if (
                not isinstance(p, Mapping)
                or "synthetic" not in p
                or "real" not in p
                or not ({"metric", "metrics"} & set(p))
            ):
                raise ValueError(
                    f"MetricCorrelation: pair {p!r} must have keys synthetic, real and metric (or metrics)"
                )
            metrics = p.get("metrics") or [p["metric"]]
            for m in [metrics] if isinstance(metrics, str) else metrics:
                out.append((str(p["synthetic"]), str(p["real"]), str(m)))
        return out

    def _keys(self, synthetic: str, real: str, metric: str) -> tuple[str, str]:
        return f"{self.stage}/{synthetic}/{metric}", f"{self.stage}/{real}/{metric}"

    def _check_keys(self, metrics: Mapping[str, Any]) -> None:
        missing = [k for s, r, m in self.pairs for k in self._keys(s, r, m) if _metric_value(metrics, k) is None]
        if missing:
            available = sorted({_strip_dataloader_suffix(k) for k in metrics if k.startswith(f"{self.stage}/")})
            raise KeyError(
                f"MetricCorrelation: the validation logged no {sorted(set(missing))}. Available {self.stage} metrics: "
                f"{available or 'none'}. Check the pairs' set names (the datamodule's val_set_names) and metric names."
            )
        self._checked = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Append this validation's pairs, then log correlations and the scatter plot."""
        if trainer.sanity_checking or self.stage != "val":
            return
        self._collect(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Same as :meth:`on_validation_end` when ``stage="test"``."""
        if self.stage == "test":
            self._collect(trainer)

    def _collect(self, trainer: L.Trainer) -> None:
        metrics = trainer.callback_metrics
        if not self._checked:
            self._check_keys(metrics)
        for s, r, m in self.pairs:
            ks, kr = self._keys(s, r, m)
            self.records.append(
                {
                    "run": self.run_id,
                    "epoch": int(trainer.current_epoch),
                    "step": int(trainer.global_step),
                    "synthetic": s,
                    "real": r,
                    "metric": m,
                    "x": _metric_value(metrics, ks),
                    "y": _metric_value(metrics, kr),
                }
            )
        if self.history_path and trainer.is_global_zero:
            atomic_write_json(self.history_path, {"pairs": [list(p) for p in self.pairs], "records": self.records})
        self._log_correlations(trainer)

    def _points(self, synthetic: str, real: str, metric: str) -> tuple[list[float], list[float], list[str]]:
        rows = [r for r in self.records if (r["synthetic"], r["real"], r["metric"]) == (synthetic, real, metric)]
        return [r["x"] for r in rows], [r["y"] for r in rows], [f"{r['run']}@{r['epoch']}" for r in rows]

    def _log_correlations(self, trainer: L.Trainer) -> None:
        logged: dict[str, float] = {}
        for s, r, m in self.pairs:
            xs, ys, names = self._points(s, r, m)
            key = pair_key(s, r, m)
            if len(xs) < MIN_POINTS:
                if not self._said_waiting:
                    log.info(
                        "MetricCorrelation: %d of %d validations so far; correlations are logged from %d on",
                        len(xs),
                        MIN_POINTS,
                        MIN_POINTS,
                    )
                    self._said_waiting = True
                continue
            corr = correlate_pairs(
                xs, ys, self.methods, ci=self.ci, interval=self.interval, bootstrap=self.bootstrap, seed=len(xs)
            )
            self.last_correlations[key] = corr
            for method, c in corr.items():
                if not c.ok or c.coefficient is None:
                    continue
                logged[f"corr/{key}/{method}"] = c.coefficient
                if c.ci_low is not None and c.ci_high is not None:
                    logged[f"corr/{key}/{method}_ci_low"] = c.ci_low
                    logged[f"corr/{key}/{method}_ci_high"] = c.ci_high
            if self.log_plot and trainer.is_global_zero:
                from synthrel_lightning.correlation.plots import scatter_figure

                fig = scatter_figure(xs, ys, labels=None, correlations=corr, xlabel=f"{s} {m}", ylabel=f"{r} {m}")
                log_figure(trainer, f"corr/{key}/scatter", fig)
        if logged:
            for k, v in logged.items():
                trainer.callback_metrics[k] = torch.tensor(v)
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics(logged, step=trainer.global_step)

    @property
    def state_key(self) -> str:
        """Checkpoint key that tells several instances with different pairs apart."""
        return self._generate_state_key(pairs=self.pairs, stage=self.stage)

    def state_dict(self) -> dict[str, Any]:
        """History of recorded pairs (saved in the checkpoint)."""
        return {"records": list(self.records), "run_id": self.run_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history from a checkpoint."""
        self.records = list(state_dict.get("records", []))
        self.run_id = state_dict.get("run_id", self.run_id)
