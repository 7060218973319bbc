"""Live model swap: watch the champion alias, load new versions in the background, swap them in.

A :class:`ChampionWatcher` thread asks the registry which version the alias names every
``interval_s``. When it changes, the thread loads that version (the slow part: download and
rebuild) and leaves it in a :class:`ModelSlot`. The serve loop takes it from the slot between two
batches, checks that it serves like the running model (channels, lookback, horizon, frequency),
and swaps it in, or refuses it and keeps serving the old one. A version that failed to load is
tried again with backoff (the failure may be a registry outage); one refused as incompatible is
not, until the alias moves.

:class:`LocalCopy` keeps the version serving on disk, so a serve started while the registry is
down can still start, from the champion it last served.

The registry is reached only through the two callables the watcher is given, so this module
imports no MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import InvalidFileError
from pipeline.files import MAX_CHECKPOINT_BYTES, one_line, open_regular, read_json_object
from pipeline.forecast import LoadedForecaster
from pipeline.model import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

UNLOADABLE = "unloadable"
INCOMPATIBLE = "incompatible"
# The longest wait between two attempts to load a version that failed.
MAX_RETRY_S = 600.0
VERSION_FILE = "local champion copy's version file"
DIGEST_BLOCK = 1 << 20  # bytes hashed at a time: the digest holds no checkpoint in memory
MAX_NAME = 1000  # a registered model's name or version is far shorter


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="champion-watcher", daemon=True)
        self._seen = current_version
        self._champion_version, self._load_version = champion_version, load_version
        self._slot, self._interval_s = slot, interval_s
        self._stopped = threading.Event()
        self._clock = clock
        self._failures: dict[str, int] = {}  # version -> failed loads in a row
        self._retry_at = 0.0

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
        failures = self._failures.get(version, 0)
        if failures and self._clock() < self._retry_at:
            return
        logger.info("champion moved to version %s: loading it in the background", version)
        try:
            loaded = self._load_version(version)
        except Exception as err:
            self._failed(version, failures + 1, err)
            return
        self._seen, self._failures = version, {}
        self._slot.offer(loaded)

    def _failed(self, version: str, failures: int, err: Exception) -> None:
        self._failures = {version: failures}
        delay = min(self._interval_s * 2**failures, MAX_RETRY_S)
        self._retry_at = self._clock() + delay
        logger.error(
            "version %s cannot be loaded (attempt %d), retrying in %.0f s: %s",
            version,
            failures,
            delay,
            err,
        )
        if failures == 1:
            self._slot.refuse(Refusal(version, UNLOADABLE, str(err)))

    def stop(self) -> None:
        self._stopped.set()


class LocalCopy:
    """The version a serve process runs, kept in ``folder`` to start from when MLflow is down.

    One checkpoint file per model name, written atomically, with the version in a sidecar
    file written after it; a copy is only read back when both agree.
    """

    def __init__(self, folder: Path, model_name: str) -> None:
        self._folder = folder
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
        self._checkpoint = folder / f"{safe}.pt"
        self._meta = folder / f"{safe}.json"

    def save(self, forecaster: LoadedForecaster) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        tmp = self._checkpoint.with_suffix(".tmp")
        os.replace(save_checkpoint(forecaster.model, tmp), self._checkpoint)
        meta = {"name": forecaster.name, "version": forecaster.version, "sha256": self._digest()}
        tmp_meta = self._meta.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, self._meta)

    def load(self) -> LoadedForecaster | None:
        """The saved version, or None if there is none or it cannot be used (a WARNING says
        why, in one line naming the file: torn, too large, not a checkpoint, another digest).

        Both files are read as operator files are (:mod:`pipeline.files`): capped, regular
        files only, schema-checked.
        """
        if not self._meta.exists():
            logger.info("no local copy of the champion in %s", self._folder)
            return None
        try:
            meta = LocalCopyMeta.model_validate(read_json_object(self._meta, VERSION_FILE))
            if meta.sha256 != self._digest():
                raise InvalidFileError(
                    f"{self._checkpoint}: the checkpoint is not the one {self._meta} names"
                )
            model = load_checkpoint(self._checkpoint)
        except ValidationError as err:
            reason = f"{self._meta}: not a {VERSION_FILE}: {one_line(err)}"
            logger.warning("the local copy of the champion is unusable: %s", reason)
            return None
        except (InvalidFileError, OSError) as err:  # OSError: a read failing midway
            logger.warning("the local copy of the champion is unusable: %s", err)
            return None
        return LoadedForecaster(meta.name, meta.version, model)

    def _digest(self) -> str:
        """The checkpoint's SHA-256, read in blocks (capped as a checkpoint is)."""
        digest = hashlib.sha256()
        with open_regular(self._checkpoint, MAX_CHECKPOINT_BYTES, "local champion copy") as file:
            for block in iter(lambda: file.read(DIGEST_BLOCK), b""):
                digest.update(block)
        return digest.hexdigest()


class LocalCopyMeta(BaseModel):
    """The sidecar of a local copy: which version the checkpoint is, and its digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
    version: Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
