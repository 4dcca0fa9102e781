"""Split the zoo evaluation into disjoint shards (``--shard i/n``) and merge them into one result.

Shard ``i`` of ``n`` evaluates the zoo entries at positions ``i, i + n, i + 2n, ...`` (zoo order,
0-based ``i``). Each shard writes its own
:class:`~synthrel_lightning.correlation.results.ResultsStore` under
``<evaluate dir>/shards/<i>-of-<n>/`` with a ``shard.json`` manifest (index, count, models,
evaluation configuration hash). :func:`merge_shards` accepts a set of shards only when they
were made with the same configuration, their indices are ``0 .. n-1`` exactly once, their
model lists are disjoint and together are the zoo; anything else is refused with a
:class:`ShardError` naming what is missing or repeated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from synthrel_lightning.atomic import atomic_write_json
from synthrel_lightning.correlation.results import ResultsStore

__all__ = ["Shard", "ShardError", "merge_shards", "parse_shard", "shard_dir", "shard_entries", "write_manifest"]

T = TypeVar("T")
MANIFEST = "shard.json"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """Shards that cannot be merged (overlapping, incomplete, or made with another configuration)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: expected 0 <= index < count (e.g. 0/4 ... 3/4)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> :class:`Shard` (0-based ``i``; a SLURM array ``--array=0-<n-1>`` gives it directly)."""
    m = _SPEC.match(str(text))
    if not m:
        raise ValueError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. --shard 0/4")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_entries(entries: Sequence[T], shard: Shard) -> list[T]:
    """The entries shard ``shard`` evaluates: positions ``index, index + count, ...`` of ``entries``."""
    return [e for j, e in enumerate(entries) if j % shard.count == shard.index]


def shard_dir(evaluate_dir: str | Path, shard: Shard) -> Path:
    """Where shard ``shard`` keeps its results: ``<evaluate_dir>/shards/<i>-of-<n>``."""
    return Path(evaluate_dir) / "shards" / f"{shard.index}-of-{shard.count}"


def write_manifest(folder: str | Path, shard: Shard, models: Sequence[str], config: str) -> Path:
    """Record which shard ``folder`` holds, its models (zoo order) and the evaluation configuration hash."""
    payload = {"index": shard.index, "count": shard.count, "models": list(models), "config": config}
    return atomic_write_json(Path(folder) / MANIFEST, payload)


def _manifests(evaluate_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted((evaluate_dir / "shards").glob(f"*/{MANIFEST}")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ShardError(f"shard manifest {path} cannot be read ({e}); rerun that shard") from None
        found.append((path.parent, payload))
    return found


def merge_shards(evaluate_dir: str | Path, zoo: Sequence[str], config: str) -> ResultsStore | None:
    """Merge the shards made for ``config`` into one store over ``zoo`` (in zoo order); None when there are none.

    Shards made for another configuration are ignored (a changed study starts over); among the
    rest, overlapping or missing shards and models are refused with :class:`ShardError`.
    """
    evaluate_dir = Path(evaluate_dir)
    shards = [(d, m) for d, m in _manifests(evaluate_dir) if m.get("config") == config]
    if not shards:
        return None
    counts = sorted({int(m["count"]) for _, m in shards})
    if len(counts) > 1:
        raise ShardError(
            f"shards in {evaluate_dir / 'shards'} split the zoo in different ways (n = {counts}); "
            "keep the folders of one split only"
        )
    n = counts[0]
    seen: dict[int, Path] = {}
    owner: dict[str, int] = {}
    for folder, m in shards:
        i = int(m["index"])
        if i in seen:
            raise ShardError(f"shard {i}/{n} appears twice: {seen[i]} and {folder}")
        seen[i] = folder
        for name in m["models"]:
            if name in owner:
                raise ShardError(f"shards overlap: model {name!r} is in shard {owner[name]}/{n} and in shard {i}/{n}")
            owner[name] = i
    missing_shards = sorted(set(range(n)) - set(seen))
    if missing_shards:
        listed = ", ".join(f"{i}/{n}" for i in missing_shards)
        raise ShardError(
            f"shards incomplete: shard(s) {listed} not found in {evaluate_dir / 'shards'}; run them first "
            "(or delete that folder to evaluate in one process)"
        )
    missing = [z for z in zoo if z not in owner]
    extra = sorted(set(owner) - set(zoo))
    if missing or extra:
        raise ShardError(
            f"shards do not cover the zoo: missing {missing or 'none'}, not in the zoo {extra or 'none'}; "
            "rerun the shards with the current zoo"
        )
    stores = {i: ResultsStore(folder) for i, folder in seen.items()}
    merged = ResultsStore(evaluate_dir)
    merged.models = {}
    for name in zoo:
        record = stores[owner[name]].models.get(name)
        if record is None:
            raise ShardError(f"shard {owner[name]}/{n} lists {name!r} but has no result for it; rerun that shard")
        merged.models[name] = record
    merged.save()
    return merged
