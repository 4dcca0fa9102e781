"""Run a metric's many small CPU tensor operations on one intra-op thread.

Each elementwise operation on a CPU tensor is a parallel region whose threads meet at a barrier.
When the cores are busy (data-loader workers, other processes), a descheduled thread holds every
barrier up for a scheduler time slice: measured on a 2-core machine under load (load average 8),
the binned pixel metric took 456 ms per 512x1024 frame on 2 threads and 49 ms on one. Its update
is memory-bound and made of a few dozen such operations, so one thread loses little when the
machine is idle and avoids that stall when it is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Limit torch's intra-op threads to ``threads`` while inside, for CPU work only (``None``: unchanged).

    The setting is process-wide, so torch work that other Python threads of the process run at the
    same moment is limited too; it is restored on exit.
    """
    if threads is None or device.type != "cpu" or torch.get_num_threads() <= threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


__all__ = ["cpu_threads"]
