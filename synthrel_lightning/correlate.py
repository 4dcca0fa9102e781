"""``python -m synthrel_lightning correlate``: evaluate a model zoo on paired synthetic/real sets and correlate the scores.

For each model of the zoo, every named evaluation set of the datamodule is evaluated
with ``lightning.Trainer.validate`` (the module logs ``val/<set>/<metric>``); results
go incrementally to ``results.json`` / ``results.csv`` (a rerun skips models already
done; a model that fails is recorded with its error and the others continue). Then,
for each (synthetic set, real set, metric) pair: Pearson/Spearman/Kendall with
bootstrap CIs (``correlations.json``/``.csv``), a scatter plot per pair
(``plots/``), and, from per-frame statistics of the synthetic sets, the correlation
as a function of the number of synthetic frames (``subsample.json``, ``plots/``).

Example config::

    zoo:
      - name: deeplab_r50
        checkpoint: runs/deeplab_r50/checkpoints/last.ckpt
        config: runs/deeplab_r50/config.yaml      # LightningCLI config: its model section
      - name: segformer_b0
        checkpoint: runs/segformer_b0/last.ckpt
        model: {class_path: synthrel_lightning.models.OODSegmenter, init_args: {segmenter: ...}}
    data: {class_path: synthrel_lightning.data.CityscapesOODDataModule, init_args: {...}}
    pairs:
      - {synthetic: synthetic_fog, real: acdc_fog, metrics: [miou, ece]}
      - {synthetic: cityscapes_objects, real: road_anomaly, metrics: [ap, fpr95]}
    output_dir: outputs/correlate
    trainer: {accelerator: auto, devices: 1}
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import Callback

from synthrel_lightning.atomic import atomic_write, atomic_write_text
from synthrel_lightning.correlation import (
    METHODS,
    correlate_pairs,
    pair_key,
    reducer_for,
    subsample_curve,
    write_json_atomic,
)

log = logging.getLogger(__name__)

Metrics = dict[str, dict[str, float]]
"""Metric values by set name, then metric name."""

FRAME_METRICS: tuple[str, ...] = ("miou", "ece", "ap", "auroc", "fpr95")
"""Metrics whose per-frame sufficient statistics are collected for the subsampling curve."""


@dataclass
class ZooEntry:
    """One model of the zoo: a name plus a checkpoint and/or a model definition.

    ``model`` is a ``class_path``/``init_args`` mapping (as in a LightningCLI config);
    ``config`` is a LightningCLI config file whose ``model`` section is used instead.
    With a definition, ``checkpoint`` (if given) supplies the weights; without one,
    the checkpoint is loaded with ``model_class.load_from_checkpoint``.
    """

    name: str
    checkpoint: str | None = None
    model: dict[str, Any] | None = None
    config: str | None = None
    model_class: str = "synthrel_lightning.models.OODSegmenter"
    strict: bool = True


@dataclass
class Pair:
    """A synthetic evaluation set, its real counterpart, and the metrics to correlate."""

    synthetic: str
    real: str
    metrics: list[str] = field(default_factory=lambda: ["miou"])


# ---------------------------------------------------------------------------------------- results store


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


class ResultsStore:
    """``results.json`` (+ ``results.csv``) in ``output_dir``: per-model status, metrics or error; rewritten atomically."""

    def __init__(self, output_dir: str | Path) -> None:
        import json

        self.dir = Path(output_dir)
        self.json_path = self.dir / "results.json"
        self.csv_path = self.dir / "results.csv"
        self.models: dict[str, dict[str, Any]] = {}
        if self.json_path.exists():
            try:
                payload = json.loads(self.json_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.json_path} is not valid JSON ({e}); move it away to start over") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("models"), dict):
                raise ValueError(f"{self.json_path} has no 'models' mapping; it was not written by correlate")
            self.models = payload["models"]

    def is_done(self, name: str) -> bool:
        """Whether ``name`` was evaluated successfully already."""
        return self.models.get(name, {}).get("status") == "ok"

    def record_ok(self, name: str, metrics: Metrics, seconds: float, entry: Mapping[str, Any] | None = None) -> None:
        """Store a successful evaluation and rewrite the files."""
        self.models[name] = {
            "status": "ok",
            "metrics": metrics,
            "seconds": round(seconds, 3),
            "entry": dict(entry or {}),
        }
        self.save()

    def record_failed(self, name: str, error: str, seconds: float, entry: Mapping[str, Any] | None = None) -> None:
        """Store a failure (with its error text) and rewrite the files."""
        self.models[name] = {
            "status": "failed",
            "error": error,
            "seconds": round(seconds, 3),
            "entry": dict(entry or {}),
        }
        self.save()

    def ok_metrics(self) -> dict[str, Metrics]:
        """Metrics of the successfully evaluated models, by model name."""
        return {n: r["metrics"] for n, r in self.models.items() if r.get("status") == "ok"}

    def save(self) -> None:
        """Rewrite results.json and results.csv (model, set, metric, value; failures as status rows)."""
        write_json_atomic(self.json_path, {"models": self.models})
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["model", "status", "set", "metric", "value"])
        for name, rec in self.models.items():
            if rec.get("status") != "ok":
                w.writerow([name, rec.get("status"), "", "", ""])
                continue
            for set_name, metrics in sorted(rec["metrics"].items()):
                for metric, value in sorted(metrics.items()):
                    w.writerow([name, "ok", set_name, metric, value])
        _write_text_atomic(self.csv_path, buf.getvalue())


def run_zoo(
    entries: Sequence[ZooEntry],
    evaluate_fn: Callable[[ZooEntry], Metrics],
    store: ResultsStore,
    retry_failed: bool = True,
    progress: bool = True,
) -> ResultsStore:
    """Evaluate each entry not yet done with ``evaluate_fn``; failures are recorded and the loop goes on."""
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"zoo names must be unique; repeated: {dupes}")
    todo = [e for e in entries if not store.is_done(e.name) and (retry_failed or e.name not in store.models)]
    skipped = len(entries) - len(todo)
    if skipped:
        log.info("correlate: %d of %d models already in %s, skipped", skipped, len(entries), store.json_path)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(entries), initial=skipped, desc="models", unit="model", disable=not progress)
    failed = 0
    try:
        for entry in todo:
            bar.set_postfix_str(entry.name)
            start = time.perf_counter()
            try:
                metrics = evaluate_fn(entry)
                _check_metrics(entry.name, metrics)
            except Exception as e:  # one bad model must not stop the zoo
                failed += 1
                err = f"{type(e).__name__}: {e}"
                log.error("correlate: model %r failed: %s", entry.name, err)
                log.debug("%s", traceback.format_exc())
                store.record_failed(entry.name, err, time.perf_counter() - start, asdict(entry))
            else:
                store.record_ok(entry.name, metrics, time.perf_counter() - start, asdict(entry))
            bar.update(1)
    finally:
        bar.close()
    if failed:
        log.warning("correlate: %d model(s) failed; see 'error' in %s", failed, store.json_path)
    return store


def _check_metrics(name: str, metrics: Any) -> None:
    if not isinstance(metrics, Mapping) or not all(isinstance(v, Mapping) for v in metrics.values()):
        raise TypeError(
            f"evaluation of {name!r} returned {type(metrics).__name__}; expected {{set: {{metric: value}}}}"
        )
    if not metrics:
        raise ValueError(f"evaluation of {name!r} logged no val/<set>/<metric> values")


# ---------------------------------------------------------------------------------------- correlation outputs


def correlate_results(
    results: Mapping[str, Metrics],
    pairs: Sequence[Pair],
    output_dir: str | Path,
    methods: Sequence[str] = METHODS,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Per-pair correlations across models -> correlations.json/.csv and scatter plots; returns the rows."""
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        for metric in pair.metrics:
            names, xs, ys, missing = [], [], [], []
            for model, m in results.items():
                x = m.get(pair.synthetic, {}).get(metric)
                y = m.get(pair.real, {}).get(metric)
                if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
                    missing.append(model)
                    continue
                names.append(model)
                xs.append(float(x))
                ys.append(float(y))
            if missing:
                log.warning(
                    "correlate: %s: no finite %s on both %s and %s for %s",
                    metric,
                    metric,
                    pair.synthetic,
                    pair.real,
                    missing,
                )
            corr = correlate_pairs(xs, ys, methods, bootstrap, ci, seed)
            key = pair_key(pair.synthetic, pair.real, metric)
            plot_path = None
            if plots and xs:
                from synthrel_lightning.plots import save_figure, scatter_figure

                fig = scatter_figure(
                    xs,
                    ys,
                    names,
                    corr,
                    xlabel=f"{pair.synthetic} {metric} (synthetic)",
                    ylabel=f"{pair.real} {metric} (real)",
                    title=key,
                )
                plot_path = str(save_figure(fig, out / "plots" / f"scatter_{_slug(key)}.png"))
            for method, c in corr.items():
                rows.append(
                    {
                        "pair": key,
                        "synthetic": pair.synthetic,
                        "real": pair.real,
                        "metric": metric,
                        **c.to_dict(),
                        "models": names,
                        "missing_models": missing,
                        "plot": plot_path,
                    }
                )
    write_json_atomic(out / "correlations.json", {"correlations": rows})
    buf = io.StringIO()
    cols = [
        "synthetic",
        "real",
        "metric",
        "method",
        "n",
        "status",
        "coefficient",
        "ci_low",
        "ci_high",
        "p_value",
        "message",
    ]
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r[c] is None else r[c] for c in cols])
    _write_text_atomic(out / "correlations.csv", buf.getvalue())
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("~", "-vs-"))


# ---------------------------------------------------------------------------------------- per-frame statistics


class FrameStatistics(Callback):
    """Lightning callback collecting additive per-frame statistics on chosen sets, for the subsampling curve.

    It re-runs ``pl_module(images)`` on the chosen sets' batches (doubling their
    forward cost) and keeps, per frame: the (K, K) confusion matrix (mIoU), the
    15-bin top-1 calibration sums (ECE), and a histogram of the OOD score (AP, AUROC,
    FPR95). The OOD histogram uses 4096 bins on ``0.5 + 0.5 tanh((s - c) / w)``
    with c, w the median and spread of the set's first batch: a rank-preserving map,
    so the metrics are the dataset-level definitions up to the bin resolution (the
    exactly computed full-set value is logged beside it for comparison).
    """

    def __init__(
        self, sets: Mapping[str, Sequence[str]], num_classes: int = 19, ece_bins: int = 15, ood_bins: int = 4096
    ) -> None:
        super().__init__()
        self.sets = {k: list(v) for k, v in sets.items()}
        self.num_classes = num_classes
        self.ece_bins = ece_bins
        self.ood_bins = ood_bins
        self.stats: dict[str, dict[str, list[np.ndarray]]] = {}
        self.names: dict[str, list[str]] = {}
        self._squash: dict[str, tuple[float, float]] = {}

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        import torch

        getter = getattr(pl_module, "_set_name", None)
        set_name = (
            getter("val", dataloader_idx)
            if callable(getter)
            else (
                (getattr(trainer.datamodule, "val_set_names", None) or [f"val_{i}" for i in range(dataloader_idx + 1)])[
                    dataloader_idx
                ]
            )
        )
        if trainer.sanity_checking or set_name not in self.sets:
            return
        wanted = self.sets[set_name]
        with torch.no_grad():
            logits = pl_module(batch["image"]).float()
        probs = logits.softmax(1)
        conf, pred = probs.max(1)
        store = self.stats.setdefault(set_name, {})
        names = batch.get("name") or [f"{batch_idx}_{i}" for i in range(logits.shape[0])]
        self.names.setdefault(set_name, []).extend(str(n) for n in names)
        k = self.num_classes
        label = batch.get("label")
        if label is not None and ({"miou", "ece"} & set(wanted)):
            for i in range(logits.shape[0]):
                valid = label[i] < k
                t, p = label[i][valid], pred[i][valid]
                cm = torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
                store.setdefault("miou", []).append(cm.cpu().numpy())
                c = conf[i][valid]
                b = (c * self.ece_bins).long().clamp_(0, self.ece_bins - 1)
                bins = torch.stack(
                    [
                        torch.bincount(b, minlength=self.ece_bins).float(),
                        torch.bincount(b, weights=c, minlength=self.ece_bins),
                        torch.bincount(b, weights=(p == t).float(), minlength=self.ece_bins),
                    ]
                )
                store.setdefault("ece", []).append(bins.cpu().numpy())
        ood = batch.get("ood")
        if ood is not None and ({"ap", "auroc", "fpr95"} & set(wanted)):
            scorer = getattr(pl_module, "score", None)
            if callable(scorer):
                score = scorer(logits).float()
            else:
                from synthrel_lightning.scores import ood_score

                score = ood_score(pl_module.ood_score, logits).float()
            if set_name not in self._squash:
                valid_all = score[ood != 255]
                med = float(valid_all.median()) if valid_all.numel() else 0.0
                spread = float(valid_all.std()) if valid_all.numel() > 1 else 1.0
                self._squash[set_name] = (med, spread if spread > 0 else 1.0)
            c0, w = self._squash[set_name]
            for i in range(logits.shape[0]):
                m = ood[i] != 255
                t = 0.5 + 0.5 * torch.tanh((score[i][m] - c0) / (2.0 * w))
                b = (t.double() * self.ood_bins).long().clamp_(0, self.ood_bins - 1)
                pos = ood[i][m] == 1
                hist = torch.stack(
                    [
                        torch.bincount(b[~pos], minlength=self.ood_bins),
                        torch.bincount(b[pos], minlength=self.ood_bins),
                    ]
                )
                store.setdefault("ood_hist", []).append(hist.cpu().numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat ``{"<set>__<stat>": (F, ...) array, "<set>__names": names}`` for saving with numpy."""
        out: dict[str, np.ndarray] = {}
        for set_name, stats in self.stats.items():
            out[f"{set_name}__names"] = np.asarray(self.names[set_name])
            for stat, frames in stats.items():
                out[f"{set_name}__{stat}"] = np.stack(frames)
        return out


def _stat_for(metric: str) -> str:
    return "ood_hist" if metric in ("ap", "auroc", "fpr95") else metric


def save_frame_stats(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save per-frame statistics atomically as .npz."""
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def subsampling_outputs(
    results: Mapping[str, Metrics],
    pairs: Sequence[Pair],
    output_dir: str | Path,
    sizes: Sequence[int] | None = None,
    repeats: int = 20,
    method: str = "pearson",
    seed: int = 0,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Subsampling curves from ``frame_stats/<model>.npz`` -> subsample.json and curve plots; returns the rows."""
    out = Path(output_dir)
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        for metric in pair.metrics:
            if metric not in FRAME_METRICS:
                continue
            key = pair_key(pair.synthetic, pair.real, metric)
            per_model: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for model, m in results.items():
                path = out / "frame_stats" / f"{_slug(model)}.npz"
                y = m.get(pair.real, {}).get(metric)
                if not path.exists() or y is None or not math.isfinite(y):
                    continue
                with np.load(path) as z:
                    k_stat, k_names = f"{pair.synthetic}__{_stat_for(metric)}", f"{pair.synthetic}__names"
                    if k_stat in z and k_names in z:
                        per_model[model] = (z[k_names], z[k_stat])
            if len(per_model) < 3:
                rows.append(
                    {
                        "pair": key,
                        "status": "not_enough_points",
                        "message": f"per-frame statistics for {len(per_model)} models (need ≥ 3)",
                    }
                )
                continue
            common = sorted(set.intersection(*(set(n.tolist()) for n, _ in per_model.values())))
            if not common:
                rows.append(
                    {"pair": key, "status": "no_common_frames", "message": "models saw no common synthetic frames"}
                )
                continue
            stats, real = [], []
            for model, (names, arr) in per_model.items():
                index = {n: i for i, n in enumerate(names.tolist())}
                stats.append(arr[[index[n] for n in common]])
                real.append(results[model][pair.real][metric])
            n = len(common)
            use_sizes = [s for s in sizes if s <= n] if sizes else None
            curve = subsample_curve(stats, real, reducer_for(metric), use_sizes, repeats, method, seed=seed)
            full_binned = [reducer_for(metric)(s.sum(0)) for s in stats]
            full_exact = [results[m][pair.synthetic].get(metric) for m in per_model]
            plot_path = None
            if plots:
                from synthrel_lightning.plots import curve_figure, save_figure

                fig = curve_figure(curve, method, title=f"{key}: correlation vs synthetic frames")
                plot_path = str(save_figure(fig, out / "plots" / f"subsample_{_slug(key)}.png"))
            rows.append(
                {
                    "pair": key,
                    "status": "ok",
                    "method": method,
                    "frames": n,
                    "models": list(per_model),
                    "curve": [asdict(p) for p in curve],
                    "plot": plot_path,
                    "full_set_from_frames": full_binned,
                    "full_set_logged": full_exact,
                }
            )
    write_json_atomic(out / "subsample.json", {"curves": rows})
    return rows


# ---------------------------------------------------------------------------------------- Trainer evaluation


def instantiate_model(entry: ZooEntry) -> Any:
    """Build the LightningModule of a zoo entry (definition + weights, or checkpoint alone)."""
    import lightning as L
    import torch
    import yaml
    from jsonargparse import ArgumentParser

    spec = entry.model
    if spec is None and entry.config is not None:
        cfg_path = Path(entry.config)
        if not cfg_path.is_file():
            raise FileNotFoundError(f"zoo entry {entry.name!r}: config {cfg_path} does not exist")
        spec = (yaml.safe_load(cfg_path.read_text()) or {}).get("model")
        if spec is None:
            raise ValueError(f"zoo entry {entry.name!r}: config {cfg_path} has no 'model' section")
    if spec is not None:
        spec = dict(spec)
        spec.setdefault("class_path", entry.model_class)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--model", type=L.LightningModule)
        cfg = parser.parse_object({"model": spec})
        model = parser.instantiate_classes(cfg).model
        if entry.checkpoint is not None:
            ckpt = Path(entry.checkpoint)
            if not ckpt.is_file():
                raise FileNotFoundError(f"zoo entry {entry.name!r}: checkpoint {ckpt} does not exist")
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            state = state.get("state_dict", state)
            model.load_state_dict(state, strict=entry.strict)
        return model
    if entry.checkpoint is None:
        raise ValueError(f"zoo entry {entry.name!r} has neither checkpoint, model nor config")
    ckpt = Path(entry.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"zoo entry {entry.name!r}: checkpoint {ckpt} does not exist")
    module_name, _, cls_name = entry.model_class.rpartition(".")
    import importlib

    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        return cls.load_from_checkpoint(ckpt, map_location="cpu", strict=entry.strict)
    except TypeError as e:
        raise TypeError(
            f"zoo entry {entry.name!r}: {cls_name}.load_from_checkpoint({ckpt}) failed ({e}); the checkpoint does not hold "
            "every constructor argument (e.g. the segmenter): add 'config: <run>/config.yaml' or a 'model:' definition"
        ) from e


def metrics_from_callback_metrics(callback_metrics: Mapping[str, Any], stage: str = "val") -> Metrics:
    """``{"val/<set>/<metric>": v}`` (optionally with ``/dataloader_idx_N``) -> ``{set: {metric: v}}``."""
    out: Metrics = {}
    pattern = re.compile(rf"^{re.escape(stage)}/([^/]+)/(.+?)(?:/dataloader_idx_\d+)?$")
    for key, value in callback_metrics.items():
        m = pattern.match(key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = float(value.item() if hasattr(value, "item") else value)
    return out


class TrainerEvaluator:
    """``evaluate_fn`` that runs ``lightning.Trainer.validate`` on the datamodule's named sets for one zoo entry."""

    def __init__(
        self,
        datamodule: Any,
        trainer: Mapping[str, Any] | None = None,
        frame_stats_dir: str | Path | None = None,
        frame_sets: Mapping[str, Sequence[str]] | None = None,
        root_dir: str | Path | None = None,
    ) -> None:
        self.datamodule = datamodule
        # Each model's own outputs (e.g. its metrics summary) go to <root_dir>/<model name>.
        self.root_dir = Path(root_dir) if root_dir is not None else None
        self.trainer_kwargs = {"accelerator": "auto", "devices": 1, **dict(trainer or {})}
        self.frame_stats_dir = Path(frame_stats_dir) if frame_stats_dir is not None else None
        self.frame_sets = dict(frame_sets or {})

    def __call__(self, entry: ZooEntry) -> Metrics:
        """Evaluate one entry; also saves its per-frame statistics when configured."""
        import lightning as L

        model = instantiate_model(entry)
        callbacks: list[Any] = []
        collector = None
        if self.frame_stats_dir is not None and self.frame_sets:
            collector = FrameStatistics(self.frame_sets, num_classes=int(getattr(model, "num_classes", 19)))
            callbacks.append(collector)
        kwargs = {
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **self.trainer_kwargs,
        }
        if self.root_dir is not None and "default_root_dir" not in kwargs:
            kwargs["default_root_dir"] = str(self.root_dir / re.sub(r"[^\w.-]+", "_", entry.name))
        trainer = L.Trainer(callbacks=callbacks, **kwargs)
        trainer.validate(model, datamodule=self.datamodule, verbose=False)
        metrics = metrics_from_callback_metrics(trainer.callback_metrics)
        if collector is not None and trainer.is_global_zero:
            save_frame_stats(self.frame_stats_dir / f"{_slug(entry.name)}.npz", collector.arrays())
        return metrics


# ---------------------------------------------------------------------------------------- command line


def build_parser() -> Any:
    """The jsonargparse parser of ``correlate``."""
    import lightning as L
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(
        prog="python -m synthrel_lightning correlate",
        description="Evaluate a model zoo on paired synthetic/real sets and correlate the scores.",
    )
    p.add_argument("--config", action=ActionConfigFile, help="YAML config with the options below")
    p.add_argument("--zoo", type=list[ZooEntry], required=True, help="models: name + checkpoint and/or model/config")
    p.add_argument("--data", type=L.LightningDataModule, required=True, help="datamodule with named val sets")
    p.add_argument("--pairs", type=list[Pair], required=True, help="(synthetic, real, metrics) to correlate")
    p.add_argument("--output_dir", type=str, default="outputs/correlate")
    p.add_argument(
        "--trainer",
        type=dict[str, Any],
        default={"accelerator": "auto", "devices": 1},
        help="lightning.Trainer keyword arguments (accelerator, devices, strategy, precision, ...)",
    )
    p.add_argument("--methods", type=list[str], default=list(METHODS))
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--ci", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry_failed", type=bool, default=True, help="re-evaluate models recorded as failed")
    p.add_argument(
        "--subsample", type=bool, default=True, help="collect per-frame statistics and draw subsampling curves"
    )
    p.add_argument("--subsample_sizes", type=list[int] | None, default=None)
    p.add_argument("--subsample_repeats", type=int, default=20)
    p.add_argument("--progress", type=bool, default=True)
    return p


def _as_dataclass(cls: type, value: Any) -> Any:
    if isinstance(value, cls):
        return value
    data = (
        value.as_dict() if hasattr(value, "as_dict") else dict(vars(value) if not isinstance(value, Mapping) else value)
    )
    return cls(**data)


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run ``correlate``: evaluate the zoo (resumably), then write correlations, plots and subsampling curves."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    # Zoo models stay plain dicts here: each is built inside its own try block, so one bad entry fails alone.
    zoo = [_as_dataclass(ZooEntry, e) for e in cfg.zoo]
    pairs = [_as_dataclass(Pair, p) for p in cfg.pairs]
    init = parser.instantiate_classes(cfg.clone().update(None, "zoo").update(None, "pairs"))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame_sets: dict[str, list[str]] = {}
    for p in pairs:
        wanted = [m for m in p.metrics if m in FRAME_METRICS]
        if wanted:
            frame_sets.setdefault(p.synthetic, []).extend(wanted)
    evaluator = TrainerEvaluator(
        init.data, cfg.trainer, out / "frame_stats" if cfg.subsample else None, frame_sets, root_dir=out / "models"
    )
    store = run_zoo(zoo, evaluator, ResultsStore(out), retry_failed=cfg.retry_failed, progress=cfg.progress)
    results = store.ok_metrics()
    correlations = correlate_results(results, pairs, out, cfg.methods, cfg.bootstrap, cfg.ci, cfg.seed)
    curves = (
        subsampling_outputs(results, pairs, out, cfg.subsample_sizes, cfg.subsample_repeats, seed=cfg.seed)
        if cfg.subsample
        else []
    )
    for row in correlations:
        from synthrel_lightning.correlation import Correlation, format_correlation

        c = Correlation(**{k: row[k] for k in Correlation.__dataclass_fields__})
        print(f"{row['pair']}: {format_correlation(c)}")
    failed = [n for n, r in store.models.items() if r.get("status") != "ok"]
    if failed:
        print(f"failed models (see {store.json_path}): {failed}")
    return {"results": results, "correlations": correlations, "curves": curves, "failed": failed}


if __name__ == "__main__":
    main()
