"""Ctrl-C (SIGINT) and SIGTERM stop training at the next step boundary, where a checkpoint is whole.

A KeyboardInterrupt raised mid-step could leave the optimizer updated and the
step counter not, so the first signal only sets a flag that the loop reads
after each step; a second signal interrupts at once, for the impatient.
Outside the training loop (loading, evaluation) SIGTERM raises `Terminated`, as
Ctrl-C raises KeyboardInterrupt, so a run stopped by a scheduler still records
how it stopped instead of dying with its status left at `running`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: `received` is the first signal number seen, or None."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signals only go there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # the second signal: stop now, saying which one
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated(signum)
        self.received = signum

    def __exit__(
        self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Terminated(BaseException):
    """SIGTERM outside the training loop, or a second one inside it; a BaseException like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (StopOnSignal overrides it while training)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
