"""A worker process for the cross-process counting test (kept apart so that a spawned child imports little)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def gather_worker(rank: int, world: int, port: int, out: str) -> None:
    """Join a gloo group, gather this rank's counts and write the merged result (rank 0)."""
    import torch.distributed as dist

    from synthrel_lightning.synthesis.generate.summary import gather

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    merged = gather({"counts": {"done": rank + 1, "failed": rank}, "failed_items": [f"frame{rank}#0: boom"] * rank})
    if rank == 0:
        Path(out).write_text(json.dumps(merged))
    dist.destroy_process_group()
