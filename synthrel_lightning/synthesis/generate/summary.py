"""The final summary of a generation run: counts gathered over all processes, failed items, where outputs went."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GenerationSummary", "gather"]


def gather(payload: dict[str, Any]) -> dict[str, Any]:
    """Merge ``payload`` over all processes (ints summed, lists joined, dicts merged); as is when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return payload
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, payload)
    return _merge(parts)


def _merge(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for p in parts for k in p))
        return {k: _merge([p[k] for p in parts if k in p]) for k in keys}
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return sum(parts)
    return first


@dataclass
class GenerationSummary:
    """What a ``generate`` run did, over all processes.

    ``skipped``: items already complete before the run; ``done``: items written now; ``failed``: items
    that raised, produced no usable image or could not be written (named in ``failed_items`` with the
    reason); ``rejected``: object masks refused by the rules; ``unplaceable``: frames with no box;
    ``interrupted``: the signal that stopped the run early, if any.
    """

    bank: str
    eval_dir: str | None
    total: int
    skipped: int
    done: int
    failed: int
    rejected: int
    unplaceable: int
    failed_items: list[str] = field(default_factory=list)
    interrupted: str | None = None
    temp_files_removed: int = 0
    bank_entries: int = 0
    engine: dict[str, int] = field(default_factory=dict)
    mask: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        """Items neither complete before nor done, failed, rejected or unplaceable in this run."""
        return self.total - self.skipped - self.done - self.failed - self.rejected - self.unplaceable

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with ``pending``)."""
        return dict(asdict(self), pending=self.pending)

    def report(self, max_failed: int = 10) -> str:
        """A few human-readable lines: counts, failed items (the first ``max_failed``) and output folders."""
        head = "generate: stopped early by " + self.interrupted if self.interrupted else "generate: finished"
        lines = [
            f"{head}: {self.done} done, {self.skipped} already complete, {self.failed} failed, "
            f"{self.rejected} rejected, {self.unplaceable} unplaceable, {self.pending} left, of {self.total} items",
            f"  outlier bank: {self.bank} ({self.bank_entries} entries)",
        ]
        if self.eval_dir:
            lines.append(f"  evaluation frames: {self.eval_dir}/images, labels in {self.eval_dir}/labels")
        if self.temp_files_removed:
            lines.append(f"  removed {self.temp_files_removed} temp file(s) left by killed writers")
        if self.failed_items:
            lines.append("  failed items:")
            lines += [f"    {name}" for name in self.failed_items[:max_failed]]
            if len(self.failed_items) > max_failed:
                lines.append(f"    ... and {len(self.failed_items) - max_failed} more")
        if self.pending and not self.interrupted:
            lines.append("  rerun the same command to retry the items left")
        elif self.interrupted:
            lines.append("  rerun the same command to resume")
        return "\n".join(lines)
