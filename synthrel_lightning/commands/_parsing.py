"""The one parser style of the commands: a jsonargparse parser built from a library function's signature."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["function_parser", "instantiate", "parse_kwargs", "print_json_on_rank_zero"]


def function_parser(
    command: str,
    function: Callable[..., Any],
    description: str | None = None,
    config_help: str = "YAML file with the options below",
    as_group: bool = False,
    **options: Any,
) -> Any:
    """A parser for ``python -m synthrel_lightning <command>``: ``--config`` plus ``function``'s arguments.

    ``description`` defaults to the first line of ``function``'s docstring; ``options`` go to
    ``add_function_arguments`` (``skip``, ``fail_untyped``, ...).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    if description is None:
        description = (function.__doc__ or "").split("\n")[0]
    parser = ArgumentParser(prog=f"python -m synthrel_lightning {command}", description=description)
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    parser.add_function_arguments(function, as_group=as_group, **options)
    return parser


def instantiate(parser: Any, cfg: Any) -> Any:
    """``cfg`` with its classes built (jsonargparse >= 4.49 renamed ``instantiate_classes`` to ``instantiate``)."""
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)


def parse_kwargs(
    parser: Any, function: Callable[..., Any], args: Sequence[str] | None = None, skip: Iterable[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """Parse ``args`` (``sys.argv`` when ``None``): the parsed config and ``function``'s keyword arguments, built."""
    cfg = parser.parse_args(None if args is None else list(args))
    init = instantiate(parser, cfg)
    skipped = set(skip)
    kwargs = {name: init[name] for name in inspect.signature(function).parameters if name not in skipped}
    return cfg, kwargs


def print_json_on_rank_zero(summary: Any) -> None:
    """Print ``summary`` as indented JSON, on the process of local rank 0 only."""
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
