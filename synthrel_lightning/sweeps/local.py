"""A sweep run on this machine, without a W&B account or network: trials as subprocesses, a results table.

Each trial is the sweep's command (:func:`~synthrel_lightning.sweeps.spec.command_line`) run with the
interpreter of this process, its sampled parameters as ``--name=value``, the fixed overrides after them
(later options win), and ``--trainer.logger.init_args.save_dir=<out>/trials/<i>/attempt-<k>`` so all it
writes (run folder, checkpoints, offline wandb run) lands in the sweep's output folder. The metric is read
from the run's ``metrics_summary.json`` (:class:`~synthrel_lightning.callbacks.summary.MetricsSummary`,
the values of the last validation, as wandb's summary keeps a metric's last logged value).

Output (``out``): ``sweep.json`` (the sweep, seed and overrides it was started with), per trial
``trials/<i>/trial.json`` and ``attempt-<k>/output.log``, and after every trial ``results.csv`` and
``summary.json`` (with the best trial), all written atomically. A rerun with the same sweep skips
finished trials and reruns failed or unfinished ones; a failing trial is recorded and the sweep goes on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthrel_lightning.atomic import atomic_write_json, atomic_write_text
from synthrel_lightning.sweeps.sampling import plan_trials
from synthrel_lightning.sweeps.spec import SweepSpec, command_line, load_sweep, split_overrides

__all__ = ["WANDB_MODES", "SweepResult", "Trial", "read_metric", "run_local_sweep", "trial_environment"]

log = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")
"""``WANDB_MODE`` given to each trial: offline (default; runs stay on disk for ``wandb sync``), online, disabled."""
AGENT_VARIABLES = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SERVICE")
"""Variables an agent sets for its runs; a local trial never inherits them (it would join another run)."""
SAVE_DIR_OPTION = "--trainer.logger.init_args.save_dir"


@dataclass
class Trial:
    """One trial of a sweep: its parameters, how it ended, and the metric read from its run."""

    index: int
    params: dict[str, Any]
    status: str = "pending"
    metric: float | None = None
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float | None = None
    attempt: int = 0
    run_dir: str | None = None
    log: str | None = None
    error: str | None = None


@dataclass
class SweepResult:
    """The trials of a local sweep and the best finished one (by the sweep's metric and goal)."""

    out: Path
    metric: str
    goal: str
    trials: list[Trial]
    best: Trial | None

    @property
    def failed(self) -> list[Trial]:
        """The trials that did not finish."""
        return [t for t in self.trials if t.status != "finished"]


def trial_environment(wandb_mode: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local trial: this one, without an agent's run variables, with ``WANDB_MODE`` set."""
    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"wandb_mode {wandb_mode!r}: expected one of {', '.join(WANDB_MODES)}")
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in AGENT_VARIABLES}
    env["WANDB_MODE"] = wandb_mode
    return env


def read_metric(summary: Path, name: str) -> float | None:
    """The value of metric ``stage/set/metric`` in a run's ``metrics_summary.json`` (None if absent or NaN)."""
    data = json.loads(summary.read_text(encoding="utf-8"))
    group, _, key = name.rpartition("/")
    value = data.get("metrics", {}).get(group or "(global)", {}).get(key)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _best(trials: Sequence[Trial], goal: str) -> Trial | None:
    scored = [t for t in trials if t.status == "finished" and t.metric is not None]
    if not scored:
        return None
    pick = max if goal == "maximize" else min
    return pick(scored, key=lambda t: t.metric if t.metric is not None else math.nan)


def _error_line(log_file: Path) -> str:
    lines = [ln.strip() for ln in log_file.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else "no output")
    return line[:400]


def _check_out(out: Path, manifest: dict[str, Any]) -> None:
    """Start ``out`` (empty or new) or check that it holds this very sweep; anything else is refused."""
    record = out / "sweep.json"
    if record.is_file():
        kept = json.loads(record.read_text(encoding="utf-8"))
        for key in ("sweep", "seed", "overrides"):
            if kept.get(key) != manifest[key]:
                raise ValueError(
                    f"{out}: holds a sweep started with another {key} ({record}); "
                    "rerun it as it was started, or choose a new --out"
                )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not a sweep output folder (no sweep.json); choose a new --out")
    atomic_write_json(record, manifest)


def _run_trial(trial: Trial, spec: SweepSpec, folder: Path, extra: list[str], env: dict[str, str]) -> Trial:
    attempts = sorted(folder.glob("attempt-*"))
    attempt = folder / f"attempt-{len(attempts) + 1}"
    attempt.mkdir(parents=True)
    argv = [*command_line(spec, trial.params), *extra, f"{SAVE_DIR_OPTION}={attempt}"]
    output = attempt / "output.log"
    start = time.monotonic()
    with open(output, "w", encoding="utf-8") as fh:
        proc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    trial = Trial(trial.index, trial.params, command=argv, returncode=proc.returncode, attempt=len(attempts) + 1)
    trial.seconds = round(time.monotonic() - start, 2)
    trial.log = str(output)
    summaries = sorted(attempt.rglob("metrics_summary.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode == 0 and summaries:
        trial.status = "finished"
        trial.run_dir = str(summaries[-1].parent)
        trial.metric = read_metric(summaries[-1], spec.metric)
        if trial.metric is None:
            trial.error = f"the run's summary holds no finite {spec.metric}"
    else:
        trial.status = "failed"
        trial.error = _error_line(output) if proc.returncode else "the run wrote no metrics_summary.json"
    return trial


def _write_tables(out: Path, spec: SweepSpec, manifest: dict[str, Any], trials: list[Trial]) -> Trial | None:
    best = _best(trials, spec.goal)
    names = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "status", spec.metric, "seconds", "attempt", *names, "run_dir", "error"])
    for t in trials:
        metric = "" if t.metric is None else repr(t.metric)
        row = [t.index, t.status, metric, t.seconds, t.attempt, *(t.params.get(n, "") for n in names)]
        writer.writerow([*row, t.run_dir or "", t.error or ""])
    atomic_write_text(out / "results.csv", buf.getvalue())
    summary = {
        "sweep_file": spec.source,
        "method": spec.method,
        "sampled_as": "random" if spec.method == "bayes" else spec.method,
        "metric": {"name": spec.metric, "goal": spec.goal},
        "seed": manifest["seed"],
        "overrides": manifest["overrides"],
        "interpreter": sys.executable,
        "finished": sum(t.status == "finished" for t in trials),
        "failed": sum(t.status == "failed" for t in trials),
        "pending": sum(t.status == "pending" for t in trials),
        "best": None if best is None else asdict(best),
        "trials": [asdict(t) for t in trials],
    }
    atomic_write_json(out / "summary.json", summary)
    return best


def run_local_sweep(
    config: str | os.PathLike[str],
    out: str | os.PathLike[str],
    runs: int | None = None,
    seed: int = 0,
    wandb_mode: str = "offline",
    overrides: Sequence[str] = (),
) -> SweepResult:
    """Run the trials of sweep file ``config`` one after the other with this Python; results in ``out``.

    Args:
        config: a wandb sweep YAML file (``recipes/sweeps/demo.yaml``).
        out: the sweep's own folder (new, empty, or one this function wrote for the same sweep: resumed).
        runs: number of trials (required for ``random``/``bayes``; a grid runs all its points by default).
        seed: seed of the draws (trial ``i`` draws from a generator seeded by ``(seed, i)``).
        wandb_mode: ``WANDB_MODE`` of each trial (``offline`` needs no account).
        overrides: ``name=value`` options added to every trial after the sampled ones (they win).
    """
    spec = load_sweep(config)
    extra = split_overrides(overrides)
    if runs is not None and runs < 1:
        raise ValueError(f"runs is {runs}; expected a number of trials >= 1")
    plan = plan_trials(spec.method, spec.parameters, runs, seed)
    env = trial_environment(wandb_mode)
    if spec.method == "bayes":
        log.info("method bayes: trials are drawn at random from the same distributions (no Bayesian model here)")
    if spec.method == "grid" and runs is not None and runs > len(plan):
        log.info("the grid has %d points: %d trials, not %d", len(plan), len(plan), runs)
    if "early_terminate" in spec.raw:
        log.info("early_terminate is not applied by the local runner: every trial runs to its end")
    root = Path(out)
    manifest = {"sweep_file": spec.source, "sweep": spec.raw, "seed": seed, "overrides": list(overrides)}
    _check_out(root, manifest)
    trials = [Trial(i, params) for i, params in enumerate(plan)]
    for i, trial in enumerate(trials):
        folder = root / "trials" / f"{i:04d}"
        record = folder / "trial.json"
        if record.is_file():
            kept = Trial(**json.loads(record.read_text(encoding="utf-8")))
            if kept.params == trial.params:
                trials[i] = kept
    _write_tables(root, spec, manifest, trials)
    for i, trial in enumerate(trials):
        if trial.status == "finished":
            log.info("trial %d/%d: finished earlier, skipped", i + 1, len(trials))
            continue
        folder = root / "trials" / f"{i:04d}"
        done = _run_trial(Trial(i, plan[i]), spec, folder, extra, env)
        atomic_write_json(folder / "trial.json", asdict(done))
        trials[i] = done
        _write_tables(root, spec, manifest, trials)
        if done.status == "finished":
            log.info(
                "trial %d/%d finished in %.1f s: %s = %s", i + 1, len(trials), done.seconds, spec.metric, done.metric
            )
        else:
            log.warning(
                "trial %d/%d failed (exit %s): %s (log: %s)", i + 1, len(trials), done.returncode, done.error, done.log
            )
    best = _write_tables(root, spec, manifest, trials)
    return SweepResult(root, spec.metric, spec.goal, trials, best)
