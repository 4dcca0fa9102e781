"""What every stage of a study reads: its configuration, output folders, cache and (lazily) its datamodule.

Strings in the study's configuration may hold ``{output_dir}``, replaced by the study's output
folder, so a whole study (data it builds included) moves with ``--output_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.correlation.pairs import Pair
from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.study.cache import StageCache, config_hash

__all__ = ["SetBuild", "StudyContext", "ZooTraining", "build_component", "expand"]

log = logging.getLogger(__name__)

QC_SUFFIX = "@qc"
"""Suffix of a QC-filtered view's set name: ``<set>@qc``."""


@dataclass
class SetBuild:
    """One set the ``sets`` stage builds.

    Args:
        name: the set's name (as the study's datamodule names it).
        builder: ``class_path``/``init_args`` of a callable whose call builds the set (resumably).
        command: or a tool invocation, e.g. ``[domains, --config, recipes/generate_domains.yaml]``.
    """

    name: str
    builder: dict[str, Any] | None = None
    command: list[str] | None = None


@dataclass
class ZooTraining:
    """A zoo model the ``zoo`` stage trains with ``fit`` before the evaluation (skipped when done).

    Args:
        name: the zoo entry whose ``checkpoint`` this training writes.
        config: LightningCLI config of the run (``demo``: the packaged demo configuration).
        args: further ``fit`` options (``--trainer.max_epochs=2`` ...).
    """

    name: str
    config: str
    args: list[str] = field(default_factory=list)


def expand(value: Any, output_dir: str) -> Any:
    """``value`` with ``{output_dir}`` replaced in every string it holds."""
    if isinstance(value, str):
        return value.replace("{output_dir}", output_dir)
    if isinstance(value, dict):
        return {k: expand(v, output_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [expand(v, output_dir) for v in value]
    return value


def build_component(spec: dict[str, Any], base: Any, what: str) -> Any:
    """Instantiate a ``class_path``/``init_args`` mapping (checked against ``base``) with jsonargparse."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--component", type=base)
    try:
        cfg = parser.parse_object({"component": spec})
        built = (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)
    except Exception as e:  # jsonargparse nests causes: keep the last line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ValueError(f"study: {what}: {lines[-1] if lines else type(e).__name__}") from e
    return built.component


@dataclass
class StudyContext:
    """The study's configuration (plain data, ``{output_dir}`` expanded) and where its stages write."""

    zoo: list[ZooEntry]
    data: dict[str, Any]
    pairs: list[Pair]
    output_dir: Path
    sets: list[SetBuild] = field(default_factory=list)
    zoo_training: list[ZooTraining] = field(default_factory=list)
    qc: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    trainer: dict[str, Any] = field(default_factory=dict)
    fit_args: list[str] = field(default_factory=list)
    correlation: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    tool_runner: Callable[[list[str]], None] | None = None
    """How tools (``fit``, ``domains``...) run: the ``study`` command's own process, or (None) a subprocess."""
    _datamodule: Any = None

    @property
    def cache(self) -> StageCache:
        """The per-(stage, model, set, configuration) record cache."""
        return StageCache(self.output_dir / "cache")

    def stage_dir(self, stage: str) -> Path:
        """The output folder of ``stage``."""
        return self.output_dir / stage

    @property
    def data_hash(self) -> str:
        """Hash of the datamodule's configuration."""
        return config_hash(self.data)

    def datamodule(self) -> Any:
        """The study's LightningDataModule, built on first use (after the ``sets`` stage made its folders)."""
        if self._datamodule is None:
            import lightning as L

            self._datamodule = build_component(self.data, L.LightningDataModule, "data")
        return self._datamodule

    def synthetic_sets(self) -> list[str]:
        """The synthetic sets: every pair's synthetic side and the calibration study's synthetic domains."""
        names = [p.synthetic for p in self.pairs]
        for row in (self.calibration or {}).get("pairs", []) or []:
            if isinstance(row, dict) and "synthetic" in row:
                names.append(str(row["synthetic"]))
        return list(dict.fromkeys(names))
