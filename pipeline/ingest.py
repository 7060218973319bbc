"""The ingest stage: observations topic → validated, resampled, de-duplicated Parquet store.

Each poll is handled as a unit: parse, dead-letter the bad records, write the good ones, wait
for the dead letters' acknowledgement, and only then commit the offsets. A crash anywhere
before the commit replays the poll, and the store's first-wins de-duplication makes the
replay harmless.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from pipeline import RollcastError
from pipeline.progress import Progress
from pipeline.records import Observation, RawRecord, triage
from pipeline.store import SeriesStore
from pipeline.transport import Sink, Source
from pipeline.windows import SERIES, TS, deduplicate, resample

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 1.0
# A consumer group's first join can take several seconds; give up if none happens in this time.
ASSIGNMENT_TIMEOUT_S = 60.0


@dataclass
class IngestReport:
    records_in: int = 0
    rows_written: int = 0
    duplicates: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    series: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {
            "records_in": self.records_in,
            "rows_written": self.rows_written,
            "duplicates": self.duplicates,
            "dead_letters": dict(self.dead_letters),
            "series": len(self.series),
        }


def observations_to_frame(observations: Iterable[Observation]) -> pd.DataFrame:
    """A long frame: a row per observation; columns ``series``, ``ts`` (UTC), one per channel."""
    rows = [{SERIES: o.series, TS: o.ts_ms, **o.values} for o in observations]
    frame = pd.DataFrame(rows, columns=None if rows else [SERIES, TS])
    frame[TS] = pd.to_datetime(frame[TS], unit="ms", utc=True)
    return frame


def store_observations(
    observations: list[Observation], store: SeriesStore, freq: str
) -> tuple[int, int]:
    """De-duplicate, resample and append; return (rows written, duplicates dropped in the batch)."""
    if not observations:
        return 0, 0
    frame, duplicates = deduplicate(observations_to_frame(observations))
    return store.append(resample(frame, freq)), duplicates


def ingest_batch(
    records: list[RawRecord],
    store: SeriesStore,
    dead_letters: Sink,
    freq: str,
    max_record_bytes: int,
    report: IngestReport,
) -> None:
    """Handle one poll's records; on return they are durable and may be committed."""
    accepted, dead = triage(records, max_record_bytes)
    for letter in dead:
        dead_letters.send_dead_letter(letter)
        report.dead_letters[letter.reason] += 1
    observations = [obs for _, obs in accepted]
    written, duplicates = store_observations(observations, store, freq)
    dead_letters.flush()
    report.records_in += len(records)
    report.rows_written += written
    report.duplicates += duplicates
    report.series.update(obs.series for obs in observations)


def run_ingest(
    source: Source,
    store: SeriesStore,
    dead_letters: Sink,
    freq: str,
    idle_s: float,
    max_record_bytes: int,
    max_records: int | None = None,
) -> IngestReport:
    """Ingest until ``idle_s`` pass without a record (or ``max_records`` are read)."""
    report, progress = IngestReport(), Progress("ingest", max_records, logger)
    idle = IdleClock(idle_s)
    while max_records is None or report.records_in < max_records:
        records = source.poll(POLL_TIMEOUT_S)
        if records:
            ingest_batch(records, store, dead_letters, freq, max_record_bytes, report)
            source.commit(records)
            progress.advance(len(records), f"{report.rows_written} rows stored")
        if idle.expired(bool(records), source.assigned()):
            break
    progress.finish(f"{report.rows_written} rows stored, {report.duplicates} duplicates")
    return report


class IdleClock:
    """Says when a consumer has been idle long enough to stop.

    Time spent waiting for a partition assignment (a group join takes seconds) is not idle
    time, but no assignment within ``ASSIGNMENT_TIMEOUT_S`` is an error.
    """

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._since = self._started = time.monotonic()
        self._ever_assigned = False

    def expired(self, got_records: bool, assigned: bool) -> bool:
        now = time.monotonic()
        self._ever_assigned |= assigned
        if got_records or not assigned:
            self._since = now
        if not self._ever_assigned and now - self._started > ASSIGNMENT_TIMEOUT_S:
            raise IngestError(f"no partitions assigned after {ASSIGNMENT_TIMEOUT_S:.0f} s")
        return now - self._since >= self._idle_s


class IngestError(RollcastError):
    """The ingest stage cannot go on."""
