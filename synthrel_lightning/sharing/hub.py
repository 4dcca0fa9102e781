"""Publishing a shared set on the Hugging Face Hub: one check of the folder, then one upload call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthrel_lightning.data.io import DatasetError
from synthrel_lightning.sharing.format import CARD, MANIFEST
from synthrel_lightning.sharing.source import is_hub_id, read_manifest, split_files

__all__ = ["check_shared_folder", "push_to_hub"]


def check_shared_folder(folder: str | os.PathLike[str]) -> Path:
    """``folder`` if it is a complete shared set (card, manifest, every listed shard present), else DatasetError."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DatasetError(f"share: {path} is not a folder")
    manifest = read_manifest(path)
    if not manifest or not (path / CARD).is_file():
        raise DatasetError(
            f"share: {path} is not a shared set (expected {CARD} and {MANIFEST}); "
            "write one with `python -m synthrel_lightning share_set export`"
        )
    missing = [str(f) for files in split_files(path, manifest).values() for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"share: {path} lists shard files that are missing: {missing[:5]}")
    return path


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a shared set to the Hub dataset repository ``repo_id`` (created if absent); returns the commit URL."""
    path = check_shared_folder(folder)
    if not is_hub_id(repo_id):
        raise ValueError(f"share: repo_id {repo_id!r} is not a Hub id (expected owner/name)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info: Any = api.upload_folder(
        repo_id=repo_id,
        folder_path=path,
        repo_type="dataset",
        revision=revision,
        commit_message=commit_message or f"Upload shared set {path.name}",
    )
    return str(getattr(info, "commit_url", info))
