"""Shared test fixtures: paths to the real data in ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("SYNTHREL_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Root of the real datasets shipped beside the repository."""
    if not SHARED_DATASETS.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATASETS}; set SYNTHREL_SHARED_DATASETS")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def cityscapes_mini(shared_datasets: Path) -> Path:
    """The real Cityscapes frame in the official layout."""
    return shared_datasets / "cityscapes_mini"


@pytest.fixture(scope="session")
def road_anomaly_root(shared_datasets: Path) -> Path:
    """The real Road Anomaly benchmark."""
    return shared_datasets / "road_anomaly"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny diffusers models on one CPU thread (restored afterwards).

    Tiny models are dominated by thread synchronisation when the CPU is shared: one
    thread is about 10x faster there.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
