"""Hyperparameter sweeps over the command line: wandb sweep files run locally, or by a W&B agent with this Python.

- :mod:`~synthrel_lightning.sweeps.spec`: a sweep file read and checked; the command line of one run;
- :mod:`~synthrel_lightning.sweeps.sampling`: grid points and random draws as wandb defines them;
- :mod:`~synthrel_lightning.sweeps.local`: the local runner (no account, no network), resumable;
- :mod:`~synthrel_lightning.sweeps.agent`: a W&B agent whose runs use the running interpreter.
"""

from synthrel_lightning.sweeps.agent import run_agent
from synthrel_lightning.sweeps.local import SweepResult, Trial, read_metric, run_local_sweep
from synthrel_lightning.sweeps.sampling import grid_points, plan_trials, sample
from synthrel_lightning.sweeps.spec import SweepSpec, command_line, load_sweep

__all__ = [
    "SweepResult",
    "SweepSpec",
    "Trial",
    "command_line",
    "grid_points",
    "load_sweep",
    "plan_trials",
    "read_metric",
    "run_agent",
    "run_local_sweep",
    "sample",
]
