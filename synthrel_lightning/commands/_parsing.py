"""The one parser style of the commands: a jsonargparse parser built from a library function's signature.

Every command parser built here:

- raises :class:`argparse.ArgumentError` on a bad option instead of printing its usage and exiting,
  so :func:`synthrel_lightning.cli.main` reports the cause first, in one line (exit status 2);
- takes options only as spelt in full (no abbreviations: ``--ckpt_pat`` is an error, not ``--ckpt_path``);
- spells the opt-in to load checkpoints that pickle arbitrary objects ``--trust_checkpoint``
  (``--trusted`` is kept as a deprecated alias) for every function with a ``trusted`` parameter;
- with :func:`ignore_fit_only_keys`, reads a fit run's ``config.yaml`` past the keys only ``fit`` knows.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from synthrel_lightning.ranks import global_rank

__all__ = [
    "FIT_ONLY_KEYS",
    "TRUST_FLAG",
    "function_parser",
    "ignore_fit_only_keys",
    "instantiate",
    "parse_kwargs",
    "print_json_on_rank_zero",
    "trust_flag",
]

log = logging.getLogger(__name__)

TRUST_FLAG = "trust_checkpoint"
"""The one name of the opt-in to load checkpoints that pickle arbitrary objects (``--trust_checkpoint``)."""
_TRUST_ALIAS = "trusted"
"""Its deprecated spelling, still accepted (with a warning)."""

FIT_ONLY_KEYS = (
    "trainer",
    "optimizer",
    "lr_scheduler",
    "seed_everything",
    "ckpt_path",
    "weights_only",
    "verbose",
)
"""Top-level keys of a fit run's ``config.yaml`` (LightningCLI's ``fit`` options) besides ``model`` and ``data``.

Commands that read such a file for its ``model`` and ``data`` (``calibrate``, ``sml_stats``) accept and
ignore those their function has no parameter for (:func:`ignore_fit_only_keys`)."""


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
    parser = ArgumentParser(
        prog=f"python -m synthrel_lightning {command}", description=description, exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    takes_trusted = _TRUST_ALIAS in inspect.signature(function).parameters
    if takes_trusted:
        options["skip"] = {*options.get("skip", ()), _TRUST_ALIAS}
    parser.add_function_arguments(function, as_group=as_group, **options)
    if takes_trusted:
        add_trust_flag(parser)
    return parser


def add_trust_flag(parser: Any) -> None:
    """Add ``--trust_checkpoint`` and its deprecated alias ``--trusted`` to ``parser`` (read by :func:`trust_flag`)."""
    parser.add_argument(
        f"--{TRUST_FLAG}",
        type=bool,
        default=False,
        help="load checkpoints that pickle arbitrary objects (can run code stored in the file: trusted files only)",
    )
    parser.add_argument(
        f"--{_TRUST_ALIAS}", type=bool | None, default=None, help=f"deprecated spelling of --{TRUST_FLAG}"
    )


def trust_flag(cfg: Any) -> bool:
    """The value of ``--trust_checkpoint`` in a parsed ``cfg``; ``--trusted`` counts too, with a deprecation warning."""
    alias = cfg.get(_TRUST_ALIAS) if hasattr(cfg, "get") else None
    if alias is not None:
        message = f"--{_TRUST_ALIAS} is deprecated: spell it --{TRUST_FLAG}"
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        log.warning(message)
        return bool(alias) or bool(cfg.get(TRUST_FLAG))
    return bool(cfg.get(TRUST_FLAG)) if hasattr(cfg, "get") else False


def ignore_fit_only_keys(parser: Any, function: Callable[..., Any] | None = None) -> None:
    """Accept (and ignore) the :data:`FIT_ONLY_KEYS` that ``function`` has no parameter of its own for."""
    taken = set(inspect.signature(function).parameters) if function is not None else set()
    taken |= {action.dest for action in parser._actions}
    for key in FIT_ONLY_KEYS:
        if key not in taken:
            parser.add_argument(f"--{key}", type=Any, default=None, help="ignored (part of a fit run's config)")


def instantiate(parser: Any, cfg: Any) -> Any:
    """``cfg`` with its classes built (jsonargparse >= 4.49 renamed ``instantiate_classes`` to ``instantiate``)."""
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)


def parse_kwargs(
    parser: Any, function: Callable[..., Any], args: Sequence[str] | None = None, skip: Iterable[str] = ()
) -> tuple[Any, dict[str, Any]]:
    """Parse ``args`` (``sys.argv`` when ``None``): the parsed config and ``function``'s keyword arguments, built."""
    from synthrel_lightning.trainer_cli import restore_nulls

    cfg = parser.parse_args(None if args is None else list(args))
    restore_nulls(cfg, [str(a) for a in (sys.argv[1:] if args is None else args)])
    init = instantiate(parser, cfg)
    skipped = set(skip)
    params = inspect.signature(function).parameters
    kwargs = {name: init[name] for name in params if name not in skipped and name != _TRUST_ALIAS}
    if _TRUST_ALIAS in params and _TRUST_ALIAS not in skipped:
        kwargs[_TRUST_ALIAS] = trust_flag(cfg)
    return cfg, kwargs


def print_json_on_rank_zero(summary: Any) -> None:
    """Print ``summary`` as indented JSON, on the process of global rank 0 only (once per run, not per node)."""
    if global_rank() == 0:
        print(json.dumps(summary, indent=2, default=str))
