"""Share trained OOD segmenters the way transformers and diffusers users share models.

``save_pretrained(folder)`` writes three files: ``config.yaml`` (the module as a LightningCLI
``model`` specification, plus the training recipe when known), ``model.safetensors`` (the
weights: temperature and score statistics included) and ``README.md`` (a model card naming the
segmenter, the recipe and the reliability metrics of the last evaluation).
``from_pretrained(folder or hub id)`` rebuilds the module from them; ``push_to_hub(repo_id)``
uploads the same folder with ``huggingface_hub``. Nothing here unpickles: the weights are
safetensors and the configuration is YAML.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from synthrel_lightning.atomic import atomic_write, atomic_write_text
from synthrel_lightning.hub.model_card import render_model_card
from synthrel_lightning.module_spec import build_module, spec_from_hyperparameters

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FORMAT_VERSION = 1


class PretrainedError(ValueError):
    """A pretrained folder or hub repository that cannot be read or rebuilt."""


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe plain data (raises TypeError on objects that are not)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "items") and callable(value.items):  # jsonargparse Namespace
        return {str(k): _plain(v) for k, v in value.items()}
    raise TypeError(f"{type(value).__name__} is not plain data")


def model_spec_of(module: torch.nn.Module) -> dict[str, Any]:
    """The ``class_path``/``init_args`` specification that rebuilds ``module``, from its hyper-parameters.

    Modules built by LightningCLI (``fit --config``) hold their whole configuration; modules built
    in Python hold only plain arguments, so the segmenter is missing: pass ``model_spec`` then.
    """
    cls = type(module)
    hparams = dict(getattr(module, "hparams", {}) or {})
    spec = spec_from_hyperparameters(hparams, f"{cls.__module__}.{cls.__qualname__}")
    missing = "segmenter" not in spec["init_args"]
    try:
        spec = _plain(spec)
    except TypeError:
        missing = True
    if missing:
        raise PretrainedError(
            f"save_pretrained: {cls.__name__} was built in Python, so its hyper-parameters do not hold the "
            "segmenter; pass model_spec={'class_path': ..., 'init_args': {...}} as in a LightningCLI config "
            "(modules trained with `fit --config` carry it)"
        )
    return spec


def _last_metrics(module: torch.nn.Module) -> dict[str, float]:
    trainer = getattr(module, "_trainer", None)
    metrics = getattr(trainer, "callback_metrics", None) or {}
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not (key.startswith("val/") or key.startswith("test/")):
            continue
        v = float(value)
        if math.isfinite(v):
            out[key] = v
    return out


def _recipe(module: torch.nn.Module, recipe: str | os.PathLike[str] | Mapping[str, Any] | None) -> Any:
    if isinstance(recipe, Mapping):
        return _plain(recipe)
    if recipe is None:
        trainer = getattr(module, "_trainer", None)
        log_dir = getattr(trainer, "log_dir", None) if trainer is not None else None
        if log_dir is None or not (Path(log_dir) / "config.yaml").is_file():
            return None
        recipe = Path(log_dir) / "config.yaml"
    path = Path(recipe)
    if not path.is_file():
        raise PretrainedError(f"save_pretrained: recipe {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PretrainedError(f"save_pretrained: recipe {path} is not valid YAML ({err})") from err


def save_pretrained(
    module: torch.nn.Module,
    save_directory: str | os.PathLike[str],
    model_spec: Mapping[str, Any] | None = None,
    recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    model_name: str | None = None,
) -> Path:
    """Write ``config.yaml``, ``model.safetensors`` and a model card ``README.md`` into ``save_directory``.

    Args:
        module: the trained module (an OODSegmenter or any LightningModule built from a specification).
        save_directory: the folder to write (created; existing files of these three names are replaced).
        model_spec: the ``class_path``/``init_args`` that rebuild the module (default: its hyper-parameters).
        recipe: the training configuration (a LightningCLI ``config.yaml`` path or mapping; default: the
            attached trainer's saved config).
        metrics: reliability metrics for the card (default: the attached trainer's last ``val/``/``test/``).
        model_name: the card's title (default: the folder name).
    """
    from safetensors.torch import save_model

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    spec = _plain(dict(model_spec)) if model_spec is not None else model_spec_of(module)
    if "class_path" not in spec:
        raise PretrainedError(f"save_pretrained: model_spec needs a 'class_path', got keys {sorted(spec)}")
    recipe_data = _recipe(module, recipe)
    scores = dict(metrics) if metrics is not None else _last_metrics(module)
    config = {"format_version": FORMAT_VERSION, "model": spec, "recipe": recipe_data}
    atomic_write_text(folder / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_model(module, tmp, metadata={"format": "pt"}))
    card = render_model_card(
        name=model_name or folder.resolve().name,
        spec=spec,
        recipe=recipe_data,
        metrics=scores,
        temperature=float(getattr(module, "temperature", torch.ones(()))),
        ood_score=str(getattr(module, "ood_score", "")),
    )
    atomic_write_text(folder / CARD_FILE, card)
    return folder


def _resolve(pretrained: str | os.PathLike[str], revision: str | None, cache_dir: str | None) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(pretrained).count("/") != 1 or str(pretrained).startswith((".", "/", "~")):
        raise PretrainedError(
            f"from_pretrained: {pretrained} is neither a folder written by save_pretrained nor a hub id ('owner/name')"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(pretrained),
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE],
            )
        )
    except Exception as err:
        raise PretrainedError(
            f"from_pretrained: could not download {pretrained!r} from the Hugging Face hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err


def from_pretrained(
    pretrained: str | os.PathLike[str],
    revision: str | None = None,
    cache_dir: str | None = None,
    strict: bool = True,
    map_location: str = "cpu",
) -> Any:
    """Rebuild a module saved by :func:`save_pretrained`, from a folder or a hub id (``owner/name``)."""
    from safetensors.torch import load_model

    folder = _resolve(pretrained, revision, cache_dir)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise PretrainedError(f"from_pretrained: {p} is missing; expected a folder written by save_pretrained")
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PretrainedError(f"from_pretrained: {config_path} is not valid YAML ({err})") from err
    spec = config.get("model") if isinstance(config, dict) else None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise PretrainedError(f"from_pretrained: {config_path} has no 'model' specification with a class_path")
    module = build_module(spec)
    try:
        missing, unexpected = load_model(module, str(weights_path), strict=strict, device=map_location)
    except Exception as err:
        raise PretrainedError(f"from_pretrained: {weights_path} does not fit {spec['class_path']}: {err}") from err
    if missing or unexpected:
        log.warning("from_pretrained: %s: missing keys %s, unexpected keys %s", weights_path, missing, unexpected)
    return module.eval()


def upload_folder(folder: Path, repo_id: str, private: bool | None, token: str | None, commit_message: str) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def push_to_hub(
    module: torch.nn.Module,
    repo_id: str,
    model_spec: Mapping[str, Any] | None = None,
    recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload OOD segmenter",
) -> str:
    """Save the module as :func:`save_pretrained` does and upload it to the hub repository ``repo_id``."""
    with tempfile.TemporaryDirectory(prefix="synthrel-push-") as tmp:
        folder = save_pretrained(module, tmp, model_spec, recipe, metrics, model_name=repo_id.split("/")[-1])
        return upload_folder(folder, repo_id, private, token, commit_message)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` methods for a LightningModule."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        model_spec: Mapping[str, Any] | None = None,
        recipe: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Path:
        """Write config, safetensors weights and a model card into ``save_directory`` (see :func:`save_pretrained`)."""
        return save_pretrained(self, save_directory, model_spec, recipe, metrics)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, pretrained: str | os.PathLike[str], revision: str | None = None, **kwargs: Any) -> Any:
        """Rebuild a saved module from a folder or a hub id; it must be an instance of this class."""
        module = from_pretrained(pretrained, revision=revision, **kwargs)
        if not isinstance(module, cls):
            raise PretrainedError(
                f"from_pretrained: {pretrained} holds a {type(module).__name__}, not a {cls.__name__}"
            )
        return module

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload this module to the hub repository ``repo_id`` (see :func:`push_to_hub`)."""
        return push_to_hub(self, repo_id, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "PretrainedError",
    "PretrainedMixin",
    "from_pretrained",
    "model_spec_of",
    "push_to_hub",
    "save_pretrained",
    "upload_folder",
]
