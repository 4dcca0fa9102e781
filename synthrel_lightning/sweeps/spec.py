"""A wandb sweep file read and checked, and the command line its agent runs for one set of parameters.

The command follows wandb's agent (``wandb/wandb_agent.py``, ``Agent._command_run``, and
``wandb/sdk/launch/sweeps/utils.py``, https://github.com/wandb/wandb): the sweep's ``command``
tokens with ``${args}`` replaced by ``--name=value`` per parameter (``str(value)``), ``${program}``
by the sweep's ``program`` and ``${envvar:NAME}`` by that environment variable. Where wandb puts the
word ``python`` for ``${interpreter}`` (found on ``PATH``), :func:`command_line` puts the interpreter
it is given, the running one by default, so a trial runs with the Python that started the sweep.
``${env}`` (``/usr/bin/env``, a no-op before a command) is left out: the environment is passed directly.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_COMMAND", "SweepSpec", "command_line", "load_sweep", "split_overrides", "sweep_from_dict"]

DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")
"""The command of a sweep file without one (wandb's ``Agent.DEFAULT_SWEEP_COMMAND``)."""
METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep file says: search method, metric to optimise, parameters, and the command of each run."""

    method: str
    metric: str
    goal: str
    parameters: dict[str, dict[str, Any]]
    command: tuple[str, ...] = DEFAULT_COMMAND
    program: str | None = None
    source: str = "<sweep>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and check a wandb sweep YAML file; a problem raises ``ValueError`` naming the file and the key."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: no such sweep file (a wandb sweep YAML, e.g. recipes/sweeps/demo.yaml)")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: not valid YAML ({' '.join(str(err).split())})") from err
    return sweep_from_dict(raw, str(file))


def sweep_from_dict(raw: Any, source: str = "<sweep>") -> SweepSpec:
    """A :class:`SweepSpec` from a sweep configuration as wandb reads it (``source`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a sweep file is a mapping (method, metric, parameters, command)")
    method = raw.get("method")
    if method not in METHODS:
        raise ValueError(f"{source}: method is {method!r}; expected one of {', '.join(METHODS)}")
    metric = raw.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise ValueError(f"{source}: metric needs a name (e.g. metric: {{name: val/demo_objects/ap, goal: maximize}})")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise ValueError(f"{source}: metric.goal is {goal!r}; expected maximize or minimize")
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError(f"{source}: parameters must map each parameter name to its values or distribution")
    for name, spec in parameters.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{source}: parameter {name!r} must be a mapping (values:, value: or distribution:)")
    command = raw.get("command", list(DEFAULT_COMMAND))
    if not isinstance(command, list) or not all(isinstance(t, (str, int, float)) for t in command):
        raise ValueError(f"{source}: command must be a list of words")
    program = raw.get("program")
    tokens = tuple(str(t) for t in command)
    if "${program}" in tokens and not program:
        raise ValueError(f"{source}: the command names ${{program}} but the file sets no program")
    return SweepSpec(method, metric["name"], goal, dict(parameters), tokens, program, source, raw)


def _args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument forms wandb's agent offers the command (``${args}``, ``${args_no_hyphens}``, ...)."""
    flags = [f"--{k}={v}" for k, v in params.items()]
    return {
        "args": flags,
        "args_no_hyphens": [f"{k}={v}" for k, v in params.items()],
        "args_no_equals": [w for k, v in params.items() for w in (f"--{k}", str(v))],
        "args_no_boolean_flags": [
            f"--{k}" if v is True else f"--{k}={v}" for k, v in params.items() if not (isinstance(v, bool) and not v)
        ],
    }


def command_line(
    spec: SweepSpec,
    params: Mapping[str, Any],
    interpreter: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The words of the run for ``params``: the sweep's command with ``${...}`` resolved as wandb's agent does.

    ``${interpreter}`` becomes ``interpreter`` (default: ``sys.executable``, the running Python);
    ``${env}`` is dropped. A ``${...}`` the agent does not define raises ``ValueError``.
    """
    env = os.environ if environ is None else environ
    forms = _args(params)
    out: list[str] = []
    for token in spec.command:
        token = _ENVVAR.sub(lambda m: env.get(m.group(1), m.group(1)), token)
        if token == "${env}":
            continue
        if token == "${interpreter}":
            out.append(interpreter or sys.executable)
        elif token == "${program}":
            out.append(str(spec.program))
        elif token.startswith("${") and token.endswith("}"):
            key = token[2:-1]
            if key not in forms:
                known = ", ".join(f"${{{k}}}" for k in ("env", "interpreter", "program", *forms))
                raise ValueError(f"{spec.source}: command word {token} is not one this runner fills ({known})")
            out.extend(forms[key])
        else:
            out.append(token)
    return out


def split_overrides(overrides: Sequence[str]) -> list[str]:
    """``name=value`` overrides as ``--name=value`` words (a leading ``--`` is accepted and kept once)."""
    out = []
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text or not text.split("=", 1)[0]:
            raise ValueError(f"override {item!r}: expected name=value (e.g. trainer.max_epochs=1)")
        out.append(f"--{text}")
    return out
