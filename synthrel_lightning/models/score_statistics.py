"""Standardized-max-logit statistics for any checkpoint, written into a copy of it."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch

from synthrel_lightning.atomic import atomic_write
from synthrel_lightning.checkpoints import load_checkpoint
from synthrel_lightning.models.ood_segmenter import OODSegmenter


def write_sml_statistics(
    model: OODSegmenter,
    data: L.LightningDataModule,
    ckpt_path: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    max_batches: int | None = None,
    device: str = "cpu",
    trusted: bool = False,
) -> Path:
    """Compute SML statistics (Jung et al. 2021) of ``model`` on ``data``'s training images and save them.

    The model (with the weights of ``ckpt_path``, when given) runs in eval mode over the training
    loader; its OOD score becomes ``standardized_max_logit`` (a configured SML module keeps its
    settings). The result is the checkpoint with the statistics in its state dict (``scorer.*``),
    written to ``output`` (default: ``<ckpt stem>_sml.ckpt`` beside it, or ``sml_statistics.ckpt``);
    it loads with ``weights_only=True``.
    """
    from synthrel_lightning.scores import StandardizedMaxLogit, StatefulScore

    payload: dict = {}
    if ckpt_path is not None:
        payload = load_checkpoint(ckpt_path, trusted=trusted, who="sml_stats")
        if not isinstance(payload, dict):
            raise ValueError(f"sml_stats: checkpoint {ckpt_path} holds {type(payload).__name__}, not a state dict")
        state = payload.get("state_dict", payload)
        weights = {k: v for k, v in state.items() if not k.startswith("scorer.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith("scorer.")]
        if missing or unexpected:
            raise ValueError(
                f"sml_stats: checkpoint {ckpt_path} does not fit the configured model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    if not isinstance(model.scorer, StatefulScore):
        model.set_ood_score(StandardizedMaxLogit(num_classes=model.num_classes))
    model.to(device)
    data.prepare_data()
    data.setup("fit")
    used = model.compute_score_statistics(data.train_dataloader(), max_batches=max_batches)
    if used == 0:
        raise ValueError("sml_stats: the data module's train_dataloader() yielded no batch")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if "state_dict" in payload or not payload:
        payload = {**payload, "state_dict": state}
        hp = dict(payload.get("hyper_parameters") or {})
        hp["ood_score"] = "standardized_max_logit"
        payload["hyper_parameters"] = hp
    else:
        payload = state
    if output is None:
        output = Path(ckpt_path).with_name(f"{Path(ckpt_path).stem}_sml.ckpt") if ckpt_path else "sml_statistics.ckpt"
    return atomic_write(output, lambda tmp: torch.save(payload, tmp))


__all__ = ["write_sml_statistics"]
