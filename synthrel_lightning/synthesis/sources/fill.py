"""Filling an outlier bank from any source, resumably and tolerating failures (foreground or background).

Item ``i`` of a fill uses ``numpy_generator(seed, namespace, i)`` and the key
``OutlierBank.make_key(namespace, seed, i)``: a re-run skips the items already in the
bank, and the result does not depend on how often the fill was interrupted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from synthrel_lightning.seeding import numpy_generator
from synthrel_lightning.synthesis.bank import OutlierBank
from synthrel_lightning.synthesis.sources.base import OutlierSource
from synthrel_lightning.synthesis.sources.producer import ProducerSpec

__all__ = ["FillReport", "fill_bank"]

log = logging.getLogger(__name__)

Producer = OutlierSource | ProducerSpec | Callable[[], OutlierSource]


@dataclass
class FillReport:
    """What a fill did: keys of the items present (in slot order), counts, the failed items and a fatal stop."""

    bank: str
    requested: int
    keys: list[str] = field(default_factory=list)
    produced: int = 0
    skipped: int = 0
    failed: int = 0
    failed_items: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fatal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (``errors``: the last five error messages)."""
        return asdict(self)


def _build(producer: Producer, device: str | None) -> OutlierSource:
    if isinstance(producer, ProducerSpec):
        return producer.build(device)
    if callable(getattr(producer, "sample", None)):
        return producer  # type: ignore[return-value]
    if callable(producer):
        return producer()
    raise TypeError(f"producer must be a ProducerSpec, a source or a factory, got {type(producer).__name__}")


def fill_bank(
    source: Producer,
    bank: OutlierBank | str | os.PathLike[str],
    n: int,
    seed: int = 0,
    namespace: str = "fill",
    device: str | None = None,
    max_consecutive_failures: int = 5,
    report: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> FillReport:
    """Add ``n`` outliers from ``source`` to ``bank``, skipping items already there; returns a :class:`FillReport`.

    ``source``: a source, a :class:`ProducerSpec` (built here, on ``device``) or a zero-argument factory.
    An item whose ``sample`` raises or returns None is counted and named in the report; the fill stops
    (``fatal`` set) after ``max_consecutive_failures`` failures in a row or when the source cannot be
    built. ``report`` receives the report as a dict (``keys`` as a count) after every item (the refresh's queue).
    """
    root = bank.root if isinstance(bank, OutlierBank) else bank
    status = FillReport(bank=str(root), requested=int(n))

    def _report() -> None:
        if report is not None:
            payload = status.as_dict()
            payload["keys"] = len(status.keys)  # a count: the list would grow every report
            report(payload)

    try:
        built = _build(source, device)
        store = bank if isinstance(bank, OutlierBank) else OutlierBank(bank, mode="a")
    except Exception as e:  # noqa: BLE001 - reported to the caller, which may keep training
        status.fatal = f"{type(e).__name__}: {e}"
        _report()
        return status
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(n), unit="item", desc=f"fill_bank {root}")
    consecutive = 0
    for i in range(int(n)):
        key = OutlierBank.make_key(namespace, seed, i)
        if key in store:
            status.skipped += 1
            status.keys.append(key)
        else:
            try:
                entry = built.sample(numpy_generator(seed, namespace, i))
                if entry is None:
                    raise RuntimeError(f"source {type(built).__name__} returned no outlier")
                if entry.seed is None:
                    entry.seed = int(seed)
                entry.metadata.setdefault("slot", i)
                entry.metadata.setdefault("namespace", namespace)
                status.keys.append(store.add(entry, key=key))
                status.produced += 1
                consecutive = 0
            except Exception as e:  # noqa: BLE001 - one bad item must not stop the others
                message = f"{type(e).__name__}: {e}"
                status.failed += 1
                status.failed_items.append(f"{namespace}#{i}: {message}")
                status.errors = (status.errors + [message])[-5:]
                consecutive += 1
                log.warning("outlier %d of %s failed: %s", i, namespace, message)
                if consecutive >= max_consecutive_failures:
                    status.fatal = f"{consecutive} consecutive failures, last: {message}"
            if status.fatal is None:
                _report()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(produced=status.produced, skipped=status.skipped, failed=status.failed)
        if status.fatal is not None:
            break
    if bar is not None:
        bar.close()
    _report()
    return status
