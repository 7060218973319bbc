"""Progress lines for long work, throttled so a fast loop does not flood the log.

One home for how Rollcast states progress: the rate, the time left (:func:`pace`) and counts by
reason (:func:`by_reason`), for replay, ingest, serve and training alike.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

# Often enough to show life, rarely enough to stay readable.
DEFAULT_EVERY_S = 2.0


class Progress:
    """Logs ``label: done/total (rate/s, ETA)`` at most every ``every_s`` seconds, and once at
    the end.

    >>> p = Progress("replay", total=10, logger=logging.getLogger("doctest"))
    >>> p.advance(10); p.done
    10
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        logger: logging.Logger | None = None,
        every_s: float = DEFAULT_EVERY_S,
    ) -> None:
        self.label, self.total, self.done = label, total, 0
        self._logger = logger or logging.getLogger("rollcast.progress")
        self._every_s = every_s
        self._started = self._last = time.monotonic()

    def advance(self, count: int = 1, note: str = "") -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self._log(now, note)

    def finish(self, note: str = "") -> None:
        self._log(time.monotonic(), note, finished=True)

    def _log(self, now: float, note: str, finished: bool = False) -> None:
        of_total = f"/{self.total}" if self.total else ""
        total = None if finished else self.total
        rate = pace(self.done, now - self._started, total)
        self._logger.info("%s: %d%s (%s) %s", self.label, self.done, of_total, rate, note)


def pace(
    done: float,
    elapsed_s: float,
    total: float | None = None,
    time_left_s: float | None = None,
    unit: str = "",
) -> str:
    """The rate of ``done`` units in ``elapsed_s``, and the time left: to ``total`` units at
    that rate, or ``time_left_s``, whichever ends first (neither given: the rate alone).

    >>> pace(50, 10.0, total=1000, unit="steps")
    '5.0 steps/s, ETA 3m10s'
    >>> pace(50, 10.0, total=1000, time_left_s=20.0)
    '5.0/s, ETA 20s'
    >>> pace(12_000, 3.0)
    '4000/s'
    """
    rate = done / max(elapsed_s, 1e-9)
    shown = (f"{rate:.1f}" if rate < 100 else f"{rate:.0f}") + (f" {unit}/s" if unit else "/s")
    left = [] if total is None else [(total - done) / rate if rate > 0 else math.inf]
    left += [] if time_left_s is None else [time_left_s]
    if not left:
        return shown
    return f"{shown}, ETA {duration(max(min(left), 0.0))}"


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``45s``, ``3m10s``, ``2h05m``; ``?`` when unbounded.

    >>> duration(7500), duration(59.6), duration(math.inf)
    ('2h05m', '1m00s', '?')
    """
    if not math.isfinite(seconds):
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def by_reason(counts: Mapping[str, int]) -> str:
    """A total and its parts, largest first: ``22 (missing_value 20, late 2)``; ``0`` for none.

    >>> by_reason({"late": 2, "missing_value": 20})
    '22 (missing_value 20, late 2)'
    >>> by_reason({})
    '0'
    """
    total = sum(counts.values())
    if not total:
        return "0"
    parts = sorted(((n, reason) for reason, n in counts.items() if n), key=lambda p: (-p[0], p[1]))
    return f"{total} (" + ", ".join(f"{reason} {n}" for n, reason in parts) + ")"
