"""The whole study in one call: :func:`run_paper_study` (what ``python -m synthrel_lightning study`` runs).

Stages ``sets -> zoo -> qc -> evaluate -> correlate -> calibration -> finetune -> report`` run in
order, each resumable and cached (see :mod:`~synthrel_lightning.study.stages`). ``stage`` runs
only the named stages; ``shard="i/n"`` evaluates one shard of the zoo (the stages before it must
be done), and a later run without ``shard`` merges the shards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.correlation.pairs import Pair
from synthrel_lightning.correlation.zoo import ZooEntry
from synthrel_lightning.study.context import SetBuild, StudyContext, ZooTraining, expand
from synthrel_lightning.study.shards import parse_shard
from synthrel_lightning.study.stages import STAGES, StageOutcome, read_record, run_stages

__all__ = ["StudyResult", "run_paper_study"]

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """The outcome of each stage that ran, and where the study's outputs are."""

    output_dir: Path
    outcomes: list[StageOutcome] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether a stage failed or some of its items (models, sets) did."""
        return any(o.status in ("failed", "partial") for o in self.outcomes)

    def summary(self) -> str:
        """One line per stage: status, seconds, and what failed."""
        lines = [f"study: outputs in {self.output_dir}"]
        for o in self.outcomes:
            extra = f" — {o.error}" if o.error else ""
            failed = o.summary.get("failed") if isinstance(o.summary, dict) else None
            if failed:
                extra += f" — failed: {failed}"
            lines.append(f"  {o.stage:<12} {o.status:<8} {o.seconds:8.1f} s{extra}")
        report = self.output_dir / "report" / "report.html"
        if report.is_file():
            lines.append(f"  report: {report} (and report.md)")
        return "\n".join(lines)


def _check_ready_for_shard(ctx: StudyContext) -> None:
    needed = [s for s, configured in (("sets", ctx.sets), ("zoo", ctx.zoo_training), ("qc", ctx.qc)) if configured]
    missing = [s for s in needed if (read_record(ctx, s) or {}).get("status") not in ("ok", "cached")]
    if missing:
        raise ValueError(
            f"study --shard: stage(s) {missing} are not done in {ctx.output_dir}; run them once first "
            f"(python -m synthrel_lightning study --config <study.yaml> {' '.join('--stage ' + s for s in needed)}), "
            "then start the shards"
        )


def run_paper_study(
    zoo: list[ZooEntry],
    data: dict[str, Any],
    pairs: list[Pair],
    sets: list[SetBuild] | None = None,
    zoo_training: list[ZooTraining] | None = None,
    qc: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    finetune: dict[str, Any] | None = None,
    output_dir: str = "outputs/study",
    trainer: dict[str, Any] | None = None,
    fit_args: list[str] | None = None,
    correlation: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    stage: list[str] | None = None,
    shard: str | None = None,
    force: bool = False,
    progress: bool = True,
    tool_runner: Callable[[list[str]], None] | None = None,
) -> StudyResult:
    """Run the paper's study: sets, qc, zoo evaluation, correlation, calibration, fine-tuning, report.

    Args:
        zoo: the models (name + checkpoint and/or model definition), as for ``correlate``.
        data: ``class_path``/``init_args`` of the LightningDataModule whose named validation sets
            are evaluated (built after the ``sets`` stage).
        pairs: (synthetic set, real set, metrics) to correlate across the zoo.
        sets: the sets the ``sets`` stage builds (builder or tool command per set).
        zoo_training: zoo models the ``zoo`` stage trains with ``fit`` first.
        qc: the ``qc`` stage's section (sets, references, masker, thresholds).
        calibration: the calibration study's section (pairs, source_set, ...).
        finetune: the fine-tuning table's section (variants, sets, metrics).
        output_dir: where everything goes; ``{output_dir}`` in any string of the configuration names it.
        trainer: ``lightning.Trainer`` keyword arguments of every evaluation.
        fit_args: options appended to every ``fit`` run of the study (zoo training, fine-tuning variants).
        correlation: options of the correlations (methods, ci, interval, bootstrap, seed).
        report: options of the report (reserved; part of its cache key).
        stage: run only these stages (default: all, in order).
        shard: ``i/n``: evaluate only shard ``i`` of ``n`` of the zoo (0-based; the evaluate stage only).
        force: rerun the named stages even when their inputs are unchanged (item caches still apply).
        progress: show progress bars.
        tool_runner: how the tools the study calls (``fit``, ``domains``...) run: the ``study`` command runs
            them in its own process; by default each runs as ``python -m synthrel_lightning <tool>``.
    """
    out = str(Path(output_dir))
    ctx = StudyContext(
        zoo=[ZooEntry(**expand(vars(e) if not isinstance(e, dict) else e, out)) for e in zoo],
        data=expand(dict(data), out),
        pairs=[p if isinstance(p, Pair) else Pair(**dict(p)) for p in pairs],
        output_dir=Path(out),
        sets=[SetBuild(**expand(vars(s) if not isinstance(s, dict) else s, out)) for s in sets or []],
        zoo_training=[
            ZooTraining(**expand(vars(t) if not isinstance(t, dict) else t, out)) for t in zoo_training or []
        ],
        qc=expand(qc, out),
        calibration=expand(calibration, out),
        finetune=expand(finetune, out),
        trainer=dict(trainer or {"accelerator": "auto", "devices": 1}),
        fit_args=[str(a) for a in expand(list(fit_args or []), out)],
        correlation=dict(correlation or {}),
        report=dict(report or {}),
        progress=progress,
        tool_runner=tool_runner,
    )
    names = [e.name for e in ctx.zoo]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"study: zoo names must be unique; repeated: {repeated}")
    chosen = list(stage or STAGES)
    kwargs: dict[str, Any] = {}
    if shard is not None:
        parsed = parse_shard(shard)
        if chosen != ["evaluate"] and stage is not None:
            raise ValueError(f"study: --shard splits the evaluate stage only; got --stage {chosen}")
        _check_ready_for_shard(ctx)
        chosen, kwargs = ["evaluate"], {"shard": parsed}
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    return StudyResult(ctx.output_dir, run_stages(ctx, chosen, force=force, **kwargs))
