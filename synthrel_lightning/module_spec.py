"""Model specifications: a LightningModule as a ``class_path``/``init_args`` mapping, and back.

A specification is what a LightningCLI config holds under ``model``; the zoo, the hub
loader and the deployment exporter all build modules from one through :func:`build_module`.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MODEL_CLASS = "synthrel_lightning.models.OODSegmenter"
"""The class a specification without ``class_path`` builds."""


def build_module(spec: dict[str, Any], default_class: str = DEFAULT_MODEL_CLASS) -> Any:
    """Instantiate the LightningModule described by ``spec`` (``class_path`` + ``init_args``) with jsonargparse."""
    import lightning as L
    from jsonargparse import ArgumentParser

    spec = dict(spec)
    spec.setdefault("class_path", default_class)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=L.LightningModule)
    return parser.instantiate_classes(parser.parse_object({"model": spec})).model


def spec_from_hyperparameters(hparams: dict[str, Any] | None, default_class: str = DEFAULT_MODEL_CLASS) -> dict[str, Any]:
    """The specification LightningCLI left in a module's hyper-parameters (``_class_path`` + flat init args)."""
    hp = dict(hparams or {})
    return {
        "class_path": hp.pop("_class_path", default_class),
        "init_args": {k: v for k, v in hp.items() if not k.startswith("_")},
    }


__all__ = ["DEFAULT_MODEL_CLASS", "build_module", "spec_from_hyperparameters"]
