"""The resumable record of a zoo evaluation: ``results.json`` and ``results.csv``, rewritten atomically per model."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json, atomic_write_text

Metrics = dict[str, dict[str, float]]
"""Metric values by set name, then metric name."""


class ResultsStore:
    """``results.json`` (+ ``results.csv``) in ``output_dir``: per-model status, metrics or error; rewritten atomically.

    An existing ``results.json`` is read back, so a rerun can skip the models already done.
    ``writable=False`` keeps records in memory only (the processes other than global rank 0
    of a multi-process evaluation: one process writes the files).
    """

    def __init__(self, output_dir: str | Path, writable: bool = True) -> None:
        self.dir = Path(output_dir)
        self.writable = writable
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

    def failed(self) -> dict[str, str]:
        """Errors of the models whose evaluation failed, by model name."""
        return {n: str(r.get("error", "")) for n, r in self.models.items() if r.get("status") != "ok"}

    def save(self) -> None:
        """Rewrite results.json and results.csv (model, set, metric, value; failures as status rows)."""
        if not self.writable:
            return
        atomic_write_json(self.json_path, {"models": self.models})
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
        atomic_write_text(self.csv_path, buf.getvalue())


__all__ = ["Metrics", "ResultsStore"]
