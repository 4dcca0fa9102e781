"""``python -m synthrel_lightning share_set {export,export_bank,push,import_bank}``: share sets through ``datasets``.

- ``export``: an evaluation or domain set to a folder of Parquet shards with a dataset card
  (options of :func:`synthrel_lightning.sharing.export_frames`; ``--dataset`` takes a dataset class
  and its arguments, e.g. ``--dataset synthrel_lightning.data.RoadAnomalyDataset --dataset.root data/road_anomaly``);
- ``export_bank``: an outlier bank likewise (:func:`synthrel_lightning.sharing.export_bank`);
- ``push``: upload an exported folder to a Hub dataset repository (:func:`synthrel_lightning.sharing.push_to_hub`);
- ``import_bank``: a shared bank (folder or Hub id) into a local outlier bank
  (:func:`synthrel_lightning.sharing.import_bank`).

Bad input prints ``error: <cause>`` and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from synthrel_lightning.commands._parsing import function_parser, parse_kwargs

__all__ = ["ACTIONS", "build_parser", "main"]

ACTIONS = ("export", "export_bank", "push", "import_bank")


def _function(action: str) -> Callable[..., Any]:
    from synthrel_lightning import sharing

    return {
        "export": sharing.export_frames,
        "export_bank": sharing.export_bank,
        "push": sharing.push_to_hub,
        "import_bank": sharing.import_bank,
    }[action]


def build_parser(action: str) -> Any:
    """The jsonargparse parser of ``share_set <action>``."""
    from torch.utils.data import Dataset

    function = _function(action)
    if action != "export":
        return function_parser(f"share_set {action}", function)
    parser = function_parser("share_set export", function, skip={"dataset"})
    parser.add_subclass_arguments(Dataset, "dataset", required=True, help="the set to export (class and arguments)")
    return parser


def _usage() -> str:
    return (
        "usage: python -m synthrel_lightning share_set {" + ",".join(ACTIONS) + "} [options]\n\n"
        "  export       an evaluation or domain set -> a folder of Parquet shards + dataset card (--dataset, --out)\n"
        "  export_bank  an outlier bank -> a folder of Parquet shards + dataset card (--bank, --out)\n"
        "  push         upload an exported folder to the Hugging Face Hub (--folder, --repo_id)\n"
        "  import_bank  a shared bank (folder or Hub id) -> a local outlier bank (--source, --bank)\n\n"
        "Run `share_set <action> --help` for its options."
    )


def main(args: list[str] | None = None) -> Any:
    """Run one action; prints its JSON summary on stdout."""
    from synthrel_lightning.data.io import DatasetError

    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        # Every action's options, so one --help documents the whole command.
        print("\n\n".join([_usage(), *(f"share_set {a}:\n{build_parser(a).format_help()}" for a in ACTIONS)]))
        return None
    action, rest = args[0], args[1:]
    if action not in ACTIONS:
        print(f"error: share_set: unknown action {action!r}; choose one of {list(ACTIONS)}", file=sys.stderr)
        raise SystemExit(2)
    parser = build_parser(action)
    function = _function(action)
    try:
        _, kwargs = parse_kwargs(parser, function, rest)
        result = function(**kwargs)
    except (DatasetError, ValueError, FileExistsError, FileNotFoundError, ImportError) as err:
        cause = str(err).removeprefix("share: ")
        print(f"error: share_set {action}: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = result if isinstance(result, dict) else {"result": result}
    print(json.dumps(summary, indent=2, default=str))
    return result
