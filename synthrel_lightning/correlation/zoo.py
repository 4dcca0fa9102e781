"""The model zoo of a correlation study: one entry per model, and how each entry becomes a LightningModule.

Checkpoints load only through :func:`synthrel_lightning.checkpoints.load_checkpoint`
(``weights_only=True``); a file that pickles arbitrary objects needs the explicit
``trust_checkpoint`` opt-in, because loading it can run code stored in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthrel_lightning.checkpoints import load_checkpoint
from synthrel_lightning.module_spec import build_module, spec_from_hyperparameters


@dataclass
class ZooEntry:
    """One model of the zoo: a name plus a checkpoint and/or a model definition.

    Args:
        name: the model's name in the results (unique in the zoo).
        checkpoint: weights (a Lightning checkpoint or a bare state dict). Alone, the model is
            rebuilt from the hyper-parameters it holds (checkpoints written by ``fit`` do).
        model: a ``class_path``/``init_args`` mapping, as in a LightningCLI config.
        config: a LightningCLI config file whose ``model`` section is used instead of ``model``.
        model_class: class used when ``model`` has no ``class_path``.
        strict: require the checkpoint's keys to match the model's exactly.
        trust_checkpoint: load ``checkpoint`` with ``weights_only=False`` (arbitrary pickled
            objects). Only for files whose origin you trust: loading them can execute code.
    """

    name: str
    checkpoint: str | None = None
    model: dict[str, Any] | None = None
    config: str | None = None
    model_class: str = "synthrel_lightning.models.OODSegmenter"
    strict: bool = True
    trust_checkpoint: bool = False


def _last_line(err: Exception) -> str:
    # jsonargparse nests the cause under a header per parser level: the last line is the cause.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _spec_from_config(entry: ZooEntry) -> dict[str, Any] | None:
    import yaml

    if entry.model is not None:
        return dict(entry.model)
    if entry.config is None:
        return None
    path = Path(entry.config)
    if not path.is_file():
        raise FileNotFoundError(f"zoo entry {entry.name!r}: config {path} does not exist")
    spec = (yaml.safe_load(path.read_text()) or {}).get("model")
    if spec is None:
        raise ValueError(f"zoo entry {entry.name!r}: config {path} has no 'model' section")
    return spec


def _spec_from_hyperparameters(entry: ZooEntry, payload: Any) -> dict[str, Any]:
    hp = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    return spec_from_hyperparameters(hp, entry.model_class)


def instantiate_model(entry: ZooEntry, trust_checkpoint: bool = False) -> Any:
    """Build the LightningModule of a zoo entry (definition + weights, or a checkpoint alone).

    ``trust_checkpoint`` (or the entry's own flag) allows checkpoints holding arbitrary
    pickled objects; without it such a file raises
    :class:`~synthrel_lightning.checkpoints.CheckpointError`.
    """
    trusted = bool(trust_checkpoint or entry.trust_checkpoint)
    who = f"correlate: zoo entry {entry.name!r}"
    spec = _spec_from_config(entry)
    if spec is None and entry.checkpoint is None:
        raise ValueError(f"zoo entry {entry.name!r} has neither checkpoint, model nor config")
    payload = load_checkpoint(entry.checkpoint, trusted=trusted, who=who) if entry.checkpoint is not None else None
    if spec is None:
        spec = _spec_from_hyperparameters(entry, payload)
        try:
            model = build_module(spec, entry.model_class)
        except Exception as e:
            raise TypeError(
                f"zoo entry {entry.name!r}: checkpoint {entry.checkpoint} does not hold every constructor argument of "
                f"{spec['class_path']} (e.g. the segmenter): add 'config: <run>/config.yaml' or a 'model:' definition "
                f"({_last_line(e)})"
            ) from e
    else:
        model = build_module(spec, entry.model_class)
    if payload is not None:
        state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{who}: checkpoint {entry.checkpoint} holds {type(payload).__name__}, not a state dict")
        model.load_state_dict(state, strict=entry.strict)
    return model


__all__ = ["ZooEntry", "instantiate_model"]
