"""Stopping generation cleanly on SIGTERM/SIGINT: the current batch is finished and written, then the loop ends."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

__all__ = ["StopSignals"]

log = logging.getLogger(__name__)


class StopSignals:
    """A context manager that turns SIGTERM and SIGINT into a stop request (``received`` names the signal).

    A second SIGINT raises KeyboardInterrupt at once (a user insisting). Outside the main thread,
    where Python cannot install handlers, it does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __call__(self) -> bool:
        """True once a stop was requested."""
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = self.received or name
        log.warning("generate: %s received; stopping after the current batch (send SIGINT again to abort)", name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous = {}
