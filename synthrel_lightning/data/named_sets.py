"""Evaluation sets by name: which dataloader is the set called ``X``.

A datamodule names its evaluation loaders with ``val_set_names`` / ``test_set_names``
(in loader order); a dict of loaders is named by its keys; unnamed loaders are
``val_0``, ``val_1``... (``test_0``... for the test stage), as the OOD segmenter logs them.
"""

from __future__ import annotations

from typing import Any

STAGES = ("val", "test")
"""Evaluation stages whose loaders carry names."""


def _check_stage(stage: str, who: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"{who}: stage must be one of {STAGES}, got {stage!r}")


def named_loaders(loaders: Any, names: list[str] | None = None, stage: str = "val") -> dict[str, Any]:
    """``{name: loader}`` for evaluation loaders given as a list, a dict or one loader.

    ``names`` label a list's loaders in order (default ``<stage>_<i>``); a dict's keys are its names.
    """
    if isinstance(loaders, dict):
        names, loaders = [str(n) for n in loaders], list(loaders.values())
    elif isinstance(loaders, (list, tuple)):
        loaders = list(loaders)
    elif loaders is None:
        loaders = []
    else:
        loaders = [loaders]
    if names is None:
        names = [f"{stage}_{i}" for i in range(len(loaders))]
    elif len(names) != len(loaders):
        raise ValueError(f"{len(loaders)} {stage} dataloaders but {len(names)} set names {list(names)}")
    return dict(zip(names, loaders))


def named_loader(
    loaders: Any, set_name: str | None, names: list[str] | None = None, stage: str = "val", who: str = "named_loader"
) -> Any:
    """The loader called ``set_name`` among ``loaders`` (see :func:`named_loaders`); ``None`` takes the only one."""
    _check_stage(stage, who)
    try:
        by_name = named_loaders(loaders, names, stage)
    except ValueError as err:
        raise ValueError(f"{who}: {err}") from None
    if not by_name:
        raise ValueError(f"{who}: there is no {stage} dataloader")
    if set_name is None:
        if len(by_name) == 1:
            return next(iter(by_name.values()))
        raise ValueError(f"{who}: several {stage} sets {list(by_name)}; choose one with set_name")
    if set_name not in by_name:
        raise ValueError(f"{who}: set_name {set_name!r} is not a {stage} set; available: {list(by_name)}")
    return by_name[set_name]


def datamodule_loader(datamodule: Any, set_name: str | None, stage: str = "val", who: str = "datamodule_loader") -> Any:
    """The ``stage`` loader named ``set_name`` of a set-up LightningDataModule (names from ``<stage>_set_names``)."""
    _check_stage(stage, who)
    names = getattr(datamodule, f"{stage}_set_names", None)
    loaders = getattr(datamodule, f"{stage}_dataloader")()
    return named_loader(loaders, set_name, list(names) if names is not None else None, stage, who)


def trainer_loader(trainer: Any, set_name: str | None, stage: str = "val", who: str = "trainer_loader") -> Any:
    """The ``stage`` loader named ``set_name`` of a Lightning Trainer: its datamodule's, else the loaders it holds."""
    if trainer.datamodule is not None:
        return datamodule_loader(trainer.datamodule, set_name, stage, who)
    _check_stage(stage, who)
    return named_loader(getattr(trainer, f"{stage}_dataloaders"), set_name, None, stage, who)


__all__ = ["STAGES", "datamodule_loader", "named_loader", "named_loaders", "trainer_loader"]
