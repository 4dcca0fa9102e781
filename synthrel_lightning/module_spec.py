"""Model specifications: a LightningModule as a ``class_path``/``init_args`` mapping, and back.

A specification is what a LightningCLI config holds under ``model``; the zoo, the hub
loader and the deployment exporter all build modules from one through :func:`build_module`.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MODEL_CLASS = "synthrel_lightning.models.OODSegmenter"
"""The class a specification without ``class_path`` builds."""


def build_module(spec: dict[str, Any], default_class: str = DEFAULT_MODEL_CLASS) -> Any:
    """Instantiate the LightningModule described by ``spec`` (``class_path`` + ``init_args``) with jsonargparse.

    The module records the whole specification as its hyper-parameters, as LightningCLI's
    instantiator does, so its checkpoints and ``save_pretrained`` folders rebuild it alone.
    """
    import lightning as L
    from jsonargparse import ArgumentParser
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    spec = dict(spec)
    spec.setdefault("class_path", default_class)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=L.LightningModule)
    parsed = parser.parse_object({"model": spec})
    model_ns = parsed.model
    hparams = {"_class_path": str(model_ns.class_path), **_plain_init_args(model_ns)}
    with _given_hyperparameters_context(hparams=hparams, instantiator="lightning.pytorch.cli.instantiate_module"):
        build = getattr(parser, "instantiate", None) or parser.instantiate_classes
        return build(parsed).model


def _plain_init_args(namespace: Any) -> dict[str, Any]:
    """The init arguments of a parsed ``class_path``/``init_args`` namespace as plain nested data."""
    init_args = getattr(namespace, "init_args", None)
    return _to_plain(init_args) if init_args is not None else {}


def _to_plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def spec_from_hyperparameters(
    hparams: dict[str, Any] | None, default_class: str = DEFAULT_MODEL_CLASS
) -> dict[str, Any]:
    """The specification LightningCLI left in a module's hyper-parameters (``_class_path`` + flat init args)."""
    hp = dict(hparams or {})
    return {
        "class_path": hp.pop("_class_path", default_class),
        "init_args": {k: v for k, v in hp.items() if not k.startswith("_")},
    }


__all__ = ["DEFAULT_MODEL_CLASS", "build_module", "spec_from_hyperparameters"]
