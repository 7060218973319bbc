"""The process's stop request, in one place: SIGTERM sets it; whatever can take long reads it.

``docker stop`` and Kubernetes send SIGTERM, then SIGKILL after a grace period (10 s by default
for Docker). The loops check :func:`requested` between polls; every long wait (a flush during a
broker outage, a backoff between retries) waits with :func:`wait` and ends early on it. Work in
flight when the stop comes is finished if it needs no broker, or abandoned with
:class:`StopRequestedError` before its offsets are committed: at-least-once, the next member
reads it again.

One event per process, as SIGTERM is per process: serve and ingest in one process stop together.
Cost: one ``threading.Event`` read per check.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline import RollcastError

logger = logging.getLogger(__name__)

_stop = threading.Event()


class StopRequestedError(RollcastError):
    """A stop was requested while work waited on a service: the work is abandoned, uncommitted."""


def requested() -> bool:
    """Whether the process was asked to stop."""
    return _stop.is_set()


def request(reason: str = "requested") -> None:
    """Ask every loop and wait of the process to stop (what SIGTERM does)."""
    if not _stop.is_set():
        logger.info("stop requested (%s): finishing or abandoning the work in flight", reason)
    _stop.set()


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``; True (at once) when a stop is requested."""
    return _stop.wait(max(seconds, 0.0))


def abandon_if_requested(what: str) -> None:
    """Raise :class:`StopRequestedError` naming ``what`` if a stop was requested."""
    if _stop.is_set():
        raise StopRequestedError(f"stopping: {what} abandoned, not committed")


@contextmanager
def stop_on_sigterm() -> Iterator[threading.Event]:
    """While inside, SIGTERM requests a stop (and nothing else: no exception is raised where the
    main thread happens to be). Yields the event it sets; a request is forgotten on entering and
    on leaving, so a stage that stopped leaves none behind for the next one in the process.

    The handler is installed from the main thread only (elsewhere Python refuses it: a stage run
    in a thread is stopped with :func:`request`), and the previous one restored on leaving: under
    Prefect that is its own handler, which turns SIGTERM into an exception.
    """
    _stop.clear()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        yield _stop
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        _stop.clear()


def _on_sigterm(signum: int, frame: Any) -> None:
    request("SIGTERM")
