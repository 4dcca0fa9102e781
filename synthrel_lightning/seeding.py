"""Deterministic random streams derived from (seed, epoch, sample index, rank, worker, ...).

Every random choice in the data pipeline draws from a generator returned here, so the
same configuration reproduces the same data (after a resume too), and different
ranks/workers/samples get independent streams.
"""

from __future__ import annotations

import numpy as np
import torch


def _entropy(seed: int, keys: tuple[int | str, ...]) -> list[int]:
    out = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        if isinstance(k, str):
            # Stable across processes (unlike hash()).
            out.extend(
                np.frombuffer(k.encode("utf-8").ljust(4 * ((len(k) + 3) // 4 or 1), b"\0"), dtype="<u4").tolist()
            )
            out.append(len(k))
        else:
            if int(k) < 0:
                raise ValueError(f"seed keys must be non-negative integers or strings, got {k!r}")
            out.append(int(k) & 0xFFFFFFFF)
            out.append(int(k) >> 32)
    return out


def numpy_generator(seed: int, *keys: int | str) -> np.random.Generator:
    """A NumPy generator whose stream depends only on ``seed`` and ``keys``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(_entropy(seed, keys))))


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit integer seed that depends only on ``seed`` and ``keys``."""
    lo, hi = (int(v) for v in np.random.SeedSequence(_entropy(seed, keys)).generate_state(2, dtype=np.uint32))
    return (lo | (hi << 32)) & ((1 << 63) - 1)


def torch_generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator (on ``device``) whose stream depends only on ``seed`` and ``keys``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def worker_context() -> tuple[int, int]:
    """(rank, dataloader worker id) of the calling process; (0, 0) outside DDP/workers."""
    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    rank = (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )
    return int(rank), int(worker)
