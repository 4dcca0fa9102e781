"""The LightningCLI behind ``fit``/``validate``/``test``/``predict``: unique runs, complete settings, short errors.

On top of Lightning's :class:`~lightning.pytorch.cli.LightningCLI`:

- each run gets its own folder: CSV and TensorBoard loggers without a ``version`` get the
  run id (:func:`synthrel_lightning.runs.current_run_id`), a ``WandbLogger`` without a
  ``name`` gets it as run name;
- the merged configuration is written to ``<run folder>/config.yaml`` (with the run id left unset,
  so a run started from that file gets a folder of its own) and logged, complete
  (``model``, ``data``, ``trainer``), to every logger's hyperparameters (wandb config, CSV
  ``hparams.yaml``, TensorBoard hparams);
- with ``--ckpt_path`` the checkpoint's model settings replace the configured ones (Lightning's
  rule), except ``prediction_dir``, an output setting, which is honoured; other replaced
  settings are reported in a warning;
- each command closes its wandb runs when it ends, so commands run in one process stay separate runs;
- configuration errors (bad option values, constructors that reject their arguments, a missing or
  unreadable ``--ckpt_path``) raise :class:`ConfigurationError`, whose message leads with the cause;
- options are taken only as spelt in full (``--trainer.max_epoch`` is an error, not an abbreviation),
  and the usage names the real command (``python -m synthrel_lightning fit``).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from synthrel_lightning.atomic import atomic_write_text
from synthrel_lightning.runs import current_run_id, run_dir

log = logging.getLogger(__name__)

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
PROG = "python -m synthrel_lightning"
"""How the trainer subcommands are started (their usage lines say so, not ``__main__.py``)."""
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values Lightning resolves itself (not file names)."""
OUTPUT_SETTINGS = ("prediction_dir",)
"""Model settings that say where to write, not what the model is: kept over a checkpoint's."""


class ConfigurationError(Exception):
    """A configuration the command cannot run: ``cause`` is the short reason, ``details`` the full report."""

    def __init__(self, cause: str, details: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.details = details


_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
    "tip:",
)
_GROUPS = {"LightningModule": "model", "LightningDataModule": "data"}
_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":?\s*(.*)$')
_CLASS = re.compile(r"^(?:- )?Problem with given class_path '([^']+)':?$")
_NESTED = re.compile(r"NestedArg\(key='[^']*', val='(.*)'\)$")


def concise_cause(message: str, max_reasons: int = 3) -> str:
    """The cause of a jsonargparse error report in one line: ``<option> (<class>): <reason> (given: <value>)``.

    The option is rebuilt from the nested ``Parser key`` / ``class_path`` lines (as typed on the
    command line, ``model.init_args.segmenter.init_args.width``); union alternatives that merely
    say "not None" are dropped.
    """
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    parts: list[str] = []
    cls = ""
    reasons: list[str] = []
    for ln in lines:
        key, klass = _KEY.match(ln), _CLASS.match(ln)
        if key:
            parts.append(key.group(1))
            if key.group(2) and key.group(2) not in reasons:
                reasons.append(key.group(2))
        elif klass:
            cls = klass.group(1).rpartition(".")[2]
            parts.append("init_args")
        elif not ln.lstrip("- ").startswith(_NOISE):
            reason = ln[2:] if ln.startswith("- ") else ln
            if reason not in reasons:
                reasons.append(reason)
    if parts and parts[-1] == "init_args":
        parts.pop()
    if not parts:
        group = next((g for c, g in _GROUPS.items() for ln in lines if ln.startswith("Subtypes:") and c in ln), "")
        parts = [group] if group else []
    given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), None)
    nested = _NESTED.search(given or "")
    given = nested.group(1) if nested else given
    text = "; ".join(reasons[:max_reasons]) or (lines[0] if lines else message.strip())
    if given and "Got value" not in text and not given.startswith("Namespace(") and len(given) <= 200:
        text += f" (given: {given})"
    where = ".".join(parts) + (f" ({cls})" if cls else "")
    return f"{where}: {text}" if where else text


class RunConfig(SaveConfigCallback):
    """Writes the merged configuration into the run's own folder and logs it to every logger's hyperparameters."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Once per run, on rank zero: ``<run folder>/config.yaml`` and ``log_hyperparams(config)`` on each logger.

        The configuration holds the module's and datamodule's arguments (under ``model`` and
        ``data``): Lightning's own logging of their hyperparameters is switched off, so they are not
        logged a second time as flat keys (where the module's ``optimizer`` replaced the
        configuration's top-level ``optimizer``).
        """
        pl_module._log_hyperparams = False
        datamodule = getattr(trainer, "datamodule", None)  # set by the Trainer at run time, not declared
        if datamodule is not None:
            datamodule._log_hyperparams = False
        if self.already_saved:
            return
        if trainer.is_global_zero:
            folder = run_dir(trainer)
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write_text(folder / self.config_filename, text)
            settings = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "config"}
            for logger in trainer.loggers:
                logger.log_hyperparams(settings)
            log.info("run folder: %s", folder)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


_NULLS = ("null", "Null", "NULL", "~", "None")
"""YAML's spellings of a null value (and Python's, as users type it)."""


def restore_nulls(config: Any, args: list[str]) -> None:
    """Set to None each option of ``args`` given as ``null`` that the parser turned into the string ``"None"``.

    jsonargparse (4.x) parses an option two classes deep (``--model.init_args.segmenter.init_args.x=null``)
    by formatting the value it already parsed back into ``--x=None``, so ``null`` arrives as the
    string ``"None"`` (e.g. ``encoder_weights='None'``, which segmentation-models-pytorch then tries
    to download). Only options the user gave as a null literal and that hold exactly ``"None"`` change.
    """
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if value.strip() not in _NULLS or key.count("init_args") < 2:
            continue
        try:
            current = config.get(key)
        except (KeyError, AttributeError, TypeError):
            continue
        if current == "None":
            config[key] = None


def _class_of(node: Any) -> type | None:
    path = getattr(node, "class_path", None) if not isinstance(node, dict) else node.get("class_path")
    if not isinstance(path, str) or "." not in path:
        return None
    from importlib import import_module

    module, _, name = path.rpartition(".")
    try:
        return getattr(import_module(module), name)
    except (ImportError, AttributeError):
        return None


class SynthrelCLI(LightningCLI):
    """LightningCLI with per-run folders, complete logged settings and cause-first errors (see module docstring)."""

    def _add_subcommands(self, parser: Any, **kwargs: Any) -> None:
        """Lightning's subcommands, each with the usage line of the command that runs it."""
        super()._add_subcommands(parser, **kwargs)
        for name, subparser in self._subcommand_parsers.items():
            subparser.prog = f"{PROG} {name}"

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse; a rejected option becomes a :class:`ConfigurationError`; ``null`` reaches nested classes as None."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise ConfigurationError(concise_cause(str(err)), str(err)) from err
        given = [str(a) for a in (sys.argv[1:] if args is None else args)]
        if given and given[0] in TRAINER_SUBCOMMANDS and self.config.get(given[0]) is not None:
            restore_nulls(self.config[given[0]], given[1:])
        elif given:
            restore_nulls(self.config, given)

    def _parse_ckpt_path(self) -> None:
        """Lightning's checkpoint-settings rule, keeping output settings and reporting what the checkpoint replaced.

        A ``--ckpt_path`` that names no file, or a file that is not a readable checkpoint, is a
        :class:`ConfigurationError` naming the file, raised before anything is built or run.
        """
        sub = self.config.get("subcommand")
        if not sub or not self.config[sub].get("ckpt_path"):
            return
        ckpt = str(self.config[sub].get("ckpt_path"))
        local = "://" not in ckpt and ckpt.split(":")[0] not in SPECIAL_CKPT_PATHS
        if local and not Path(ckpt).is_file():
            raise ConfigurationError(f"--ckpt_path {ckpt}: no such checkpoint file")
        given = self._model_args(sub)
        before = given.as_dict() if given is not None else None
        try:
            super()._parse_ckpt_path()
        except SystemExit as err:
            raise ConfigurationError("the checkpoint's model settings do not fit this model configuration") from err
        except Exception as err:
            raise ConfigurationError(_unreadable_checkpoint(ckpt, err), traceback.format_exc()) from err
        after = self._model_args(sub)
        if before is None or after is None:
            return
        for key in OUTPUT_SETTINGS:
            if before.get(key) is not None and after.get(key) != before.get(key):
                after[key] = before[key]
        now = after.as_dict()
        replaced = sorted(k for k in before if k in now and now[k] != before[k] and k not in OUTPUT_SETTINGS)
        if replaced:
            log.warning(
                "--ckpt_path: the checkpoint's model settings replace the configured %s (checkpoint wins)",
                ", ".join(f"{k}={before[k]!r} -> {now[k]!r}" for k in replaced),
            )

    def _model_args(self, sub: str | None) -> Any:
        if not sub:
            return None
        model = self.config[sub].get("model")
        return model.get("init_args") if model is not None and hasattr(model, "get") else None

    def before_instantiate_classes(self) -> None:
        """Give loggers without a version (CSV, TensorBoard) or a run name (wandb) the run id."""
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

        self._run_id_fields: list[tuple[Any, str]] = []
        config = self.config[self.subcommand] if self.subcommand else self.config
        loggers = config.trainer.get("logger")
        for node in loggers if isinstance(loggers, list) else [loggers]:
            cls = _class_of(node)
            if cls is None or getattr(node, "init_args", None) is None:
                continue
            field = "version" if issubclass(cls, (CSVLogger, TensorBoardLogger)) else None
            field = "name" if issubclass(cls, WandbLogger) else field
            if field and node.init_args.get(field) is None:
                node.init_args[field] = current_run_id()
                self._run_id_fields.append((node.init_args, field))

    def after_instantiate_classes(self) -> None:
        """Leave the run id out of the saved configuration, so a run started from it gets a folder of its own."""
        for init_args, field in getattr(self, "_run_id_fields", []):
            init_args[field] = None

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the trainer method, then close the command's wandb runs (the next command is another run)."""
        try:
            super()._run_subcommand(subcommand)
        finally:
            from lightning.pytorch.loggers import WandbLogger

            for logger in self.trainer.loggers:
                if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
                    finish = getattr(logger.experiment, "finish", None)
                    if callable(finish):
                        finish()

    def instantiate_classes(self) -> None:
        """Instantiate; a constructor that rejects its configuration becomes a :class:`ConfigurationError`."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
            raise ConfigurationError(concise_cause(str(err)), str(err)) from err


def _unreadable_checkpoint(path: str, err: Exception) -> str:
    """The cause, naming ``path``, of a checkpoint that Lightning could not read (``err``)."""
    from synthrel_lightning.checkpoints import CheckpointError, load_checkpoint

    try:
        load_checkpoint(path, who="--ckpt_path")
    except CheckpointError as named:
        # The trainer commands load tensors-only checkpoints; the opt-in belongs to the tools.
        return str(named).split(" If you trust its origin")[0]
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"--ckpt_path: checkpoint {path} cannot be read ({type(err).__name__}: {first})"


def run(args: list[str] | None) -> SynthrelCLI:
    """Run the trainer CLI on ``args`` (subcommand first; ``None`` reads ``sys.argv``)."""
    main_kwargs = {"exit_on_error": False, "allow_abbrev": False, "prog": PROG}
    sub_kwargs = {sub: {"exit_on_error": False, "allow_abbrev": False} for sub in TRAINER_SUBCOMMANDS}
    return SynthrelCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**main_kwargs, **sub_kwargs},
        args=args,
    )


__all__ = ["ConfigurationError", "RunConfig", "SynthrelCLI", "concise_cause", "restore_nulls", "run"]
