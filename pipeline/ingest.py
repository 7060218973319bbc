"""The ingest stage: observations topic → validated, step-aligned, de-duplicated Parquet store.

A record is accepted or refused by the same policy as in the serve loop
(:class:`pipeline.records.RecordPolicy`): the same checks, the same reasons, and the first
observation of a step wins.

Each poll is handled as a unit: parse, dead-letter the bad records, write the good ones, wait
for the dead letters' acknowledgement, and only then commit the offsets. A crash anywhere
before the commit replays the poll, and the store's first-wins de-duplication makes the
replay harmless.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline import RollcastError
from pipeline.progress import Progress
from pipeline.records import (
    DEFAULT_POLICY,
    LATE,
    OTHER_CONTRACT,
    DeadLetter,
    Observation,
    channel_problem,
    invalid_letter,
    triage,
)
from pipeline.store import SeriesStore
from pipeline.transport import Sink, Source
from pipeline.windows import (
    SERIES,
    TS,
    channel_columns,
    freq_to_ms,
    infer_step_ms,
    timestamps_ms,
)

if TYPE_CHECKING:  # in annotations only
    from pipeline.records import RawRecord, RecordPolicy

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


@dataclass
class StoredSeries:
    """What the store holds of one series, as the record policy needs it."""

    frame: pd.DataFrame
    channels: frozenset[str] | None  # None: a new series, whose first record sets them
    steps: list[int]  # epoch ms of every stored step, sorted
    step_ms: int = 1  # the series' step; 1 until it has two readings (nothing is floored)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> StoredSeries:
        if frame.empty:
            return cls(frame, None, [])
        steps = sorted(timestamps_ms(frame).tolist())
        return cls(frame, frozenset(channel_columns(frame)), steps)

    def holds(self, step: int) -> bool:
        i = bisect.bisect_left(self.steps, step)
        return i < len(self.steps) and self.steps[i] == step

    def is_late(self, step: int, grace_ms: int) -> bool:
        """As in serve: older than the newest step whose grace period has passed."""
        if not self.steps:
            return False
        placed = bisect.bisect_right(self.steps, self.steps[-1] - grace_ms)
        return placed > 0 and step <= self.steps[placed - 1]


def set_steps(
    stored: dict[str, StoredSeries],
    accepted: list[tuple[RawRecord, Observation]],
    step_ms: int | None,
) -> None:
    """Each series' step: ``step_ms`` when set, else inferred from its stored and new readings."""
    new: dict[str, list[int]] = {}
    for _, obs in accepted:
        new.setdefault(obs.series, []).append(obs.ts_ms)
    for series_id, series in stored.items():
        if step_ms is not None:
            series.step_ms = step_ms
            continue
        readings = np.array(series.steps + new.get(series_id, []), dtype=np.int64)
        series.step_ms = infer_step_ms(readings) or 1


class StoreContract:
    """The channels of the stored series: a new series must share one, or it is refused.

    One store holds one kind of data; a series of another dataset (no channel in common) would
    leave training nothing to stack. Read from the files once, when the first new series comes.
    """

    def __init__(self, store: SeriesStore | None = None) -> None:
        self._store = store
        self._channels: set[str] | None = None if store is not None else set()

    def refusal(self, channels: frozenset[str]) -> str | None:
        """Why a new series with ``channels`` cannot join the store; None once it has joined."""
        if self._channels is None:
            self._channels = self._store.channels() if self._store is not None else set()
        if self._channels and not self._channels & channels:
            return (
                f"channels {sorted(c[:64] for c in channels)[:8]} share none with the stored "
                f"series' {sorted(self._channels)[:8]}: one store holds one data contract; "
                "ingest this data with another ROLLCAST_DATA_DIR"
            )
        self._channels |= channels
        return None


def admit(
    accepted: list[tuple[RawRecord, Observation]],
    stored: dict[str, StoredSeries],
    policy: RecordPolicy,
    contract: StoreContract | None = None,
) -> tuple[list[Observation], list[DeadLetter], int]:
    """Apply the per-series policy as serve does: (new observations, dead letters, duplicates).

    Timestamps are floored to the step; the first observation of a step wins; a step older than
    the grace period allows is late; channels must be the series' own, and a new series'
    must share one with the store's (``contract``).
    """
    contract = contract or StoreContract()
    kept: list[Observation] = []
    dead: list[DeadLetter] = []
    duplicates = 0
    for record, obs in accepted:
        try:
            outcome = _admit_one(record, obs, stored[obs.series], policy, contract)
        except Exception as err:  # no record may stop the loop: it becomes a dead letter
            outcome = invalid_letter(record, err)
        if isinstance(outcome, DeadLetter):
            dead.append(outcome)
        elif outcome is None:
            duplicates += 1
        else:
            kept.append(outcome)
    return kept, dead, duplicates


def _admit_one(
    record: RawRecord,
    obs: Observation,
    series: StoredSeries,
    policy: RecordPolicy,
    contract: StoreContract,
) -> Observation | DeadLetter | None:
    """The step-aligned observation to store, its dead letter, or None for a duplicate."""
    if series.channels is None:
        if (refusal := contract.refusal(frozenset(obs.values))) is not None:
            return DeadLetter(record, OTHER_CONTRACT, refusal)
        series.channels = frozenset(obs.values)
    problem = channel_problem(series.channels, obs.values)
    step_ms = series.step_ms
    step = obs.ts_ms - obs.ts_ms % step_ms
    if problem is not None:
        return DeadLetter(record, *problem)
    if series.holds(step):
        return None
    if series.is_late(step, policy.grace_steps * step_ms):
        newest = series.steps[-1]
        return DeadLetter(record, LATE, f"older than the grace period allows ({newest})")
    bisect.insort(series.steps, step)
    return Observation(obs.series, step, obs.values)


def read_stored(
    store: SeriesStore, series_ids: set[str]
) -> tuple[dict[str, StoredSeries], dict[str, Exception]]:
    """What the store holds of each series, and the series whose file cannot be read."""
    stored, unreadable = {}, {}
    for series_id in series_ids:
        try:
            stored[series_id] = StoredSeries.of(store.read(series_id))
        except Exception as err:  # a damaged file: its series' records are dead-lettered
            logger.error("cannot read the stored series %r: %r", series_id[:64], err)
            unreadable[series_id] = err
    return stored, unreadable


@dataclass(frozen=True)
class Admission:
    """What a record must pass to be stored; the same for every batch of an ingest run."""

    policy: RecordPolicy
    contract: StoreContract  # a new series must share a channel with the stored ones
    step_ms: int | None = None  # every series' step; None: each one's own, from its readings


@dataclass(frozen=True)
class IngestPlan:
    """How one ingest run goes: the record policy, each series' step, and when it stops."""

    idle_s: float  # stop once this long passed without a record
    freq: str | None = None  # every series' step; None: each one's own, from its readings
    policy: RecordPolicy = DEFAULT_POLICY
    max_records: int | None = None  # stop once this many were read, idle or not


def ingest_batch(
    records: list[RawRecord],
    store: SeriesStore,
    dead_letters: Sink,
    admission: Admission,
    report: IngestReport,
) -> None:
    """Handle one poll's records; on return they are durable and may be committed."""
    accepted, dead = triage(records, admission.policy)
    stored, unreadable = read_stored(store, {obs.series for _, obs in accepted})
    for record, obs in accepted:
        if obs.series in unreadable:
            dead.append(invalid_letter(record, unreadable[obs.series]))
    accepted = [(record, obs) for record, obs in accepted if obs.series not in unreadable]
    set_steps(stored, accepted, admission.step_ms)
    kept, refused, duplicates = admit(accepted, stored, admission.policy, admission.contract)
    for letter in dead + refused:
        dead_letters.send_dead_letter(letter)
        report.dead_letters[letter.reason] += 1
    written = store.append(observations_to_frame(kept), {s: v.frame for s, v in stored.items()})
    dead_letters.flush()
    report.records_in += len(records)
    report.rows_written += written
    report.duplicates += duplicates
    report.series.update(obs.series for obs in kept)


def run_ingest(
    source: Source, store: SeriesStore, dead_letters: Sink, plan: IngestPlan
) -> IngestReport:
    """Ingest until ``plan.idle_s`` pass without a record (or ``plan.max_records`` are read).

    Each series is stored on its own step, inferred from its readings; ``plan.freq`` overrides it.
    """
    max_records = plan.max_records
    report, progress = IngestReport(), Progress("ingest", max_records, logger)
    step_ms = freq_to_ms(plan.freq) if plan.freq else None
    admission, idle = Admission(plan.policy, StoreContract(store), step_ms), IdleClock(plan.idle_s)
    while max_records is None or report.records_in < max_records:
        records = source.poll(POLL_TIMEOUT_S)
        if records:
            ingest_batch(records, store, dead_letters, admission, report)
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
