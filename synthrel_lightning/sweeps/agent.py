"""A W&B sweep agent whose runs use this Python, whatever ``python`` is first on ``PATH``.

``wandb agent`` runs the sweep's command with ``${interpreter}`` replaced by the word ``python``
(``wandb/wandb_agent.py``, ``Agent._command_run``), so an agent started outside the environment that
has synthrel-lightning runs another Python. :func:`run_agent` uses wandb's function agent instead
(``wandb.agent(sweep_id, function=...)``, ``wandb/agents/pyagent.py``): for each run the controller
hands out, wandb sets ``WANDB_RUN_ID``, ``WANDB_SWEEP_ID`` and ``WANDB_SWEEP_PARAM_PATH`` (a YAML file
holding the run's parameters as ``name: {value: ...}``) in this process's environment, the same
variables the command agent gives its subprocesses, then calls the function. The function
(:func:`trial_function`) runs the sweep's command with ``sys.executable`` in a subprocess that
inherits them, so the fit's ``WandbLogger`` (``wandb.init``) joins the agent's run: the same run id,
the sampled parameters as its configuration, the metric reported to the controller.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from synthrel_lightning.sweeps.spec import SweepSpec, command_line, load_sweep, split_overrides, sweep_from_dict

__all__ = ["AGENT_RUN_VARIABLES", "agent_command", "agent_environment", "read_run_parameters", "run_agent"]

log = logging.getLogger(__name__)

AGENT_RUN_VARIABLES = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")
"""What wandb's agent sets for each run; the run's subprocess needs all three to join it."""


def read_run_parameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parameters of an agent's run from its ``WANDB_SWEEP_PARAM_PATH`` file (``name: {value: v}``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    out: dict[str, Any] = {}
    for name, entry in data.items():
        if name in ("wandb_version", "_wandb"):
            continue
        if not isinstance(entry, dict) or "value" not in entry:
            raise ValueError(f"{path}: parameter {name!r} has no value (expected name: {{value: ...}})")
        out[name] = entry["value"]
    return out


def agent_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a run's subprocess: ``environ`` without the parent's wandb service (as wandb's agent)."""
    return {k: v for k, v in environ.items() if k != "WANDB_SERVICE"}


def agent_command(spec: SweepSpec, environ: Mapping[str, str], overrides: Sequence[str] = ()) -> list[str]:
    """The command of the agent's current run: the sweep's command with this Python and the run's parameters."""
    missing = [v for v in AGENT_RUN_VARIABLES if not environ.get(v)]
    if missing:
        raise RuntimeError(f"no sweep run to start: {', '.join(missing)} not set (they come from wandb's agent)")
    params = read_run_parameters(environ["WANDB_SWEEP_PARAM_PATH"])
    return [*command_line(spec, params, environ=environ), *split_overrides(overrides)]


def trial_function(spec: SweepSpec, overrides: Sequence[str] = ()) -> Callable[[], None]:
    """The function wandb's agent calls per run: run :func:`agent_command` in a subprocess; a failure raises."""

    def run_trial() -> None:
        env = agent_environment(os.environ)
        argv = agent_command(spec, env, overrides)
        log.info("sweep run %s: %s", env["WANDB_RUN_ID"], " ".join(argv))
        code = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL).returncode
        if code:
            raise RuntimeError(f"sweep run {env['WANDB_RUN_ID']} exited with status {code}")

    return run_trial


def _server_sweep(sweep_id: str) -> SweepSpec:
    """The sweep configuration as registered on the W&B server (needs an account and the network)."""
    import wandb

    sweep = wandb.Api().sweep(sweep_id)
    return sweep_from_dict(dict(sweep.config), f"sweep {sweep_id}")


def run_agent(
    sweep_id: str,
    count: int | None = None,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> None:
    """Start a W&B sweep agent for ``sweep_id`` (``entity/project/id``) whose runs use this Python.

    The command of each run comes from ``config`` (a sweep file) when given, else from the sweep as
    registered on the server. Needs a W&B account (``wandb login``) and the network.
    """
    import wandb
    from wandb.errors import Error as WandbError

    try:
        spec = load_sweep(config) if config is not None else _server_sweep(sweep_id)
        wandb.agent(sweep_id, function=trial_function(spec, overrides), count=count)
    except WandbError as err:
        raise ValueError(
            f"the W&B agent needs a W&B account and the network: {err} "
            "(a sweep runs without either: sweep --config <sweep.yaml> --out <folder>)"
        ) from err
