"""Live model swap: watch the champion alias, load new versions in the background, swap them in.

A :class:`ChampionWatcher` thread asks the registry which version the alias names every
``interval_s``. When it changes, the thread loads that version (the slow part: download and
rebuild) and leaves it in a :class:`ModelSlot`. The serve loop takes it from the slot between two
batches, checks that it serves like the running model (channels, lookback, horizon, frequency),
and swaps it in, or refuses it and keeps serving the old one. A version that failed to load or was
refused is not tried again until the alias moves.

The registry is reached only through the two callables the watcher is given, so this module
imports no MLflow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.forecast import LoadedForecaster

logger = logging.getLogger(__name__)

UNLOADABLE = "unloadable"
INCOMPATIBLE = "incompatible"


@dataclass(frozen=True)
class Refusal:
    version: str
    reason: str  # UNLOADABLE or INCOMPATIBLE
    detail: str


def incompatibility(current: LoadedForecaster, candidate: LoadedForecaster) -> str | None:
    """Why ``candidate`` cannot replace ``current`` without a restart, or None if it can."""
    differences = current.model.config.serving_differences(candidate.model.config)
    return "; ".join(differences) or None


class ModelSlot:
    """A one-item mailbox between the watcher thread and the serve loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: LoadedForecaster | None = None
        self._refusals: list[Refusal] = []

    def offer(self, forecaster: LoadedForecaster) -> None:
        with self._lock:
            self._loaded = forecaster  # a newer version replaces one not yet taken

    def refuse(self, refusal: Refusal) -> None:
        with self._lock:
            self._refusals.append(refusal)

    def take(self) -> tuple[LoadedForecaster | None, list[Refusal]]:
        with self._lock:
            loaded, refusals = self._loaded, self._refusals
            self._loaded, self._refusals = None, []
        return loaded, refusals


class ChampionWatcher(threading.Thread):
    """Polls the alias and loads each new version into ``slot``; a daemon thread."""

    def __init__(
        self,
        current_version: str,
        champion_version: Callable[[], str | None],
        load_version: Callable[[str], LoadedForecaster],
        slot: ModelSlot,
        interval_s: float,
    ) -> None:
        super().__init__(name="champion-watcher", daemon=True)
        self._seen = current_version
        self._champion_version, self._load_version = champion_version, load_version
        self._slot, self._interval_s = slot, interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.check_once()

    def check_once(self) -> None:
        """One look at the alias; loads and offers the version it names if that is new."""
        try:
            version = self._champion_version()
        except Exception as err:  # a registry outage must not kill the watcher
            logger.warning("cannot read the champion alias: %s", err)
            return
        if version is None or version == self._seen:
            return
        self._seen = version
        logger.info("champion moved to version %s: loading it in the background", version)
        try:
            self._slot.offer(self._load_version(version))
        except Exception as err:
            logger.error("refusing version %s: it cannot be loaded: %s", version, err)
            self._slot.refuse(Refusal(version, UNLOADABLE, str(err)))

    def stop(self) -> None:
        self._stopped.set()
