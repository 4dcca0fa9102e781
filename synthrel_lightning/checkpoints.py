"""Safe checkpoint loading: one loader for every checkpoint the product reads.

``torch.load`` with ``weights_only=False`` runs arbitrary code stored in a crafted
file. :func:`load_checkpoint` loads with ``weights_only=True`` (tensors, containers
and plain Python values only), which is enough for the checkpoints this package
writes, and names the file in every failure. Files from trusted legacy sources that
pickle arbitrary objects load only with the explicit opt-in ``trusted=True``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, corrupt or unsafe to load."""


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    trusted: bool = False,
    who: str = "load_checkpoint",
) -> Any:
    """Load ``path`` with ``torch.load(weights_only=True)`` unless ``trusted``; errors name the file.

    Args:
        path: the checkpoint file.
        map_location: where tensors are mapped (default CPU).
        trusted: allow arbitrary pickled objects (``weights_only=False``). Only for files
            whose origin you trust: loading them can execute code.
        who: the command or function name leading each error message.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{who}: checkpoint {path} does not exist (or is not a file)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{who}: checkpoint {path} is empty (0 bytes); was it written completely?")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (or, in the legacy format, a pickle stream starting with 0x80)
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{who}: checkpoint {path} ({size} bytes) is truncated or corrupt (a broken zip archive)")
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise CheckpointError(
            f"{who}: checkpoint {path} ({size} bytes) is not a torch checkpoint (neither a zip archive nor a "
            f"pickle stream; it starts with {head!r})"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if not trusted and "weights only load failed" in str(err).lower():
            raise CheckpointError(
                f"{who}: checkpoint {path} holds objects that are not plain tensors or values, and loading them "
                "could run code stored in the file. If you trust its origin, opt in with trusted=True "
                f"(--trust_checkpoint on the command line). Refused: {_refused(err)}"
            ) from err
        raise CheckpointError(f"{who}: checkpoint {path} is corrupt ({type(err).__name__}: {err})") from err
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{who}: checkpoint {path} ({size} bytes) cannot be read: it is truncated, corrupt or not a torch "
            f"checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err


def _refused(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()]
    return lines[0] if lines else str(err).splitlines()[0]


def load_state_dict(
    path: str | os.PathLike[str], trusted: bool = False, who: str = "load_state_dict"
) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: its ``state_dict`` entry (Lightning) or the file itself."""
    payload = load_checkpoint(path, trusted=trusted, who=who)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{who}: checkpoint {path} holds {type(payload).__name__}, not a state dict")
    return state


__all__ = ["CheckpointError", "load_checkpoint", "load_state_dict"]
