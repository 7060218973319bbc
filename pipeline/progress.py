"""Progress lines for long work, throttled so a fast loop does not flood the log."""

from __future__ import annotations

import logging
import time

# Often enough to show life, rarely enough to stay readable.
DEFAULT_EVERY_S = 2.0


class Progress:
    """Logs ``label: done/total (rate/s)`` at most every ``every_s`` seconds, and once at the end.

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
        self._log(time.monotonic(), note)

    def _log(self, now: float, note: str) -> None:
        rate = self.done / max(now - self._started, 1e-9)
        of_total = f"/{self.total}" if self.total else ""
        self._logger.info("%s: %d%s (%.0f/s) %s", self.label, self.done, of_total, rate, note)
