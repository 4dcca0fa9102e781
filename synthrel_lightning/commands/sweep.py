"""``python -m synthrel_lightning sweep``: run a wandb sweep file here, or a W&B agent with this Python.

Local (no account, no network; :func:`synthrel_lightning.sweeps.run_local_sweep`)::

    python -m synthrel_lightning sweep --config recipes/sweeps/demo.yaml --runs 8 --out outputs/sweeps/demo

Agent (needs ``wandb login``; :func:`synthrel_lightning.sweeps.run_agent`)::

    python -m synthrel_lightning sweep --agent <entity>/<project>/<sweep_id> --count 10

Exit status: 0 when every trial finished, 1 when a trial failed (``summary.json`` lists it), 2 for bad input.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["build_parser", "main"]


def build_parser() -> Any:
    """The ``sweep`` parser."""
    from jsonargparse import ArgumentParser

    from synthrel_lightning.sweeps.local import WANDB_MODES

    parser = ArgumentParser(
        prog="python -m synthrel_lightning sweep",
        description=(
            "Run the trials of a wandb sweep file on this machine with this Python (no W&B account), "
            "or start a W&B sweep agent whose runs use this Python (--agent)."
        ),
        exit_on_error=False,
        allow_abbrev=False,
    )
    parser.add_argument("--config", type=str, help="wandb sweep YAML file (e.g. recipes/sweeps/demo.yaml)")
    parser.add_argument("--out", type=str, help="local: the sweep's output folder (new, or one to resume)")
    parser.add_argument("--runs", type=int, help="local: number of trials (default for a grid: all its points)")
    parser.add_argument("--seed", type=int, default=0, help="local: seed of the random draws")
    parser.add_argument("--wandb_mode", choices=WANDB_MODES, default="offline", help="local: WANDB_MODE of each trial")
    parser.add_argument(
        "--override",
        type=str,
        action="append",
        default=[],
        help="name=value added to every trial after the sampled parameters (wins over them); repeatable",
    )
    parser.add_argument("--agent", type=str, help="agent: the sweep id <entity>/<project>/<sweep_id> (needs login)")
    parser.add_argument("--count", type=int, help="agent: number of runs this agent takes before it stops")
    return parser


def _local(ns: Any) -> int:
    from synthrel_lightning.sweeps import run_local_sweep

    if not ns.config or not ns.out:
        raise ValueError("a local sweep needs --config <sweep.yaml> and --out <folder> (or use --agent <sweep id>)")
    if ns.count is not None:
        raise ValueError("--count belongs to --agent; a local sweep takes --runs")
    result = run_local_sweep(ns.config, ns.out, ns.runs, ns.seed, ns.wandb_mode, ns.override)
    done = len(result.trials) - len(result.failed)
    print(f"{done} of {len(result.trials)} trials finished; table: {result.out / 'results.csv'}")
    if result.best is not None:
        params = " ".join(f"--{k}={v}" for k, v in result.best.params.items())
        print(f"best: trial {result.best.index}, {result.metric} = {result.best.metric:.6g} ({result.goal}): {params}")
        if ns.override:
            print(f"  (each trial also ran with: {' '.join('--' + o.removeprefix('--') for o in ns.override)})")
    for trial in result.failed:
        print(f"failed: trial {trial.index}: {trial.error} (log: {trial.log})", file=sys.stderr)
    return 1 if result.failed else 0


def main(args: list[str] | None = None) -> None:
    """Parse ``args`` and run the local sweep or the agent; exit 1 when a local trial failed."""
    ns = build_parser().parse_args(sys.argv[1:] if args is None else args)
    if ns.agent is None:
        code = _local(ns)
        if code:
            raise SystemExit(code)
        return
    from synthrel_lightning.sweeps import run_agent

    local_only = [n for n in ("out", "runs") if getattr(ns, n) is not None]
    if local_only:
        raise ValueError(
            f"--{local_only[0]} belongs to a local sweep; --agent takes --count (and --config, --override)"
        )
    run_agent(ns.agent, ns.count, ns.config, ns.override)


if __name__ == "__main__":
    from synthrel_lightning.cli import main as cli_main

    cli_main(["sweep", *sys.argv[1:]])
