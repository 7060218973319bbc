"""The ingest stage: observations topic → validated, step-aligned rows in the series table.

A record is accepted or refused by the same policy as in the serve loop
(:class:`pipeline.records.RecordPolicy`): the same checks, the same reasons, and the first
observation of a step wins.

Polls are gathered into flushes (``IngestPlan.flush``). A flush is handled as a unit: parse,
dead-letter the bad records, append the good ones in one store transaction that also records
each partition's newest offset, wait for the dead letters' acknowledgement, and only then commit
the Kafka offsets. A crash before the store commit replays the flush; after it, the replayed
records are at or below the offsets the table holds and are skipped: each record reaches the
table once, whichever writer, or restart, reads it (a partition whose offsets started again,
as on a broker replaced by an empty one, is told from a replay by its records' times and stored
as a new epoch of the partition: :class:`SourceOffsets`). A record held because it lies too far
ahead of its series (:class:`pipeline.windows.JumpRule`) is decided inside its flush too:
stored with the record that confirms it, or dead-lettered as ``future`` before the commit.

What the policy needs of each stored series (its channels, step and newest steps) is held in
memory (:class:`IngestLedger`), rebuilt at start by one streamed read of the table and bounded
by ``IngestPlan.max_series``; stored rows are never read back per flush.
"""

from __future__ import annotations

import bisect
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline import RollcastError, shutdown
from pipeline.progress import Progress, by_reason
from pipeline.records import (
    DEFAULT_POLICY,
    FUTURE,
    LATE,
    OTHER_CONTRACT,
    DeadLetter,
    Observation,
    channel_problem,
    invalid_letter,
    triage,
)
from pipeline.store import OffsetRange, OffsetsTakenError, RecentSteps, SeriesStore
from pipeline.transport import Sink, Source
from pipeline.windows import (
    BATCH_ENDED,
    DISPLACED,
    OUTRUN,
    SERIES,
    TS,
    HeldJump,
    Jump,
    JumpRule,
    freq_to_ms,
    infer_step_ms,
)

if TYPE_CHECKING:  # in annotations only
    from pipeline.records import RawRecord, RecordPolicy

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 1.0
# A consumer group's first join can take several seconds; give up if none happens in this time.
ASSIGNMENT_TIMEOUT_S = 60.0
# Newest steps kept per series beyond the grace period: enough to infer a step from readings.
KEPT_STEPS = 8


@dataclass
class IngestReport:
    records_in: int = 0
    rows_written: int = 0
    duplicates: int = 0
    already_stored: int = 0  # records at or below the offsets the table holds (replays)
    flushes: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    series: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        return {
            "records_in": self.records_in,
            "rows_written": self.rows_written,
            "duplicates": self.duplicates,
            "already_stored": self.already_stored,
            "dead_letters": dict(self.dead_letters),
            "series": len(self.series),
        }


def observations_to_frame(observations: Sequence[Observation]) -> pd.DataFrame:
    """A long frame: a row per observation; columns ``series``, ``ts`` (UTC), one per channel.

    Built a column at a time: cost grows with observations times channels.
    """
    channels = sorted({c for o in observations for c in o.values})
    columns: dict[str, object] = {
        SERIES: [o.series for o in observations],
        TS: pd.to_datetime(
            np.array([o.ts_ms for o in observations], dtype=np.int64), unit="ms", utc=True
        ),
    }
    for name in channels:
        columns[name] = np.array(
            [o.values.get(name, np.nan) for o in observations], dtype=np.float64
        )
    return pd.DataFrame(columns)


@dataclass
class StoredSeries:
    """What ingest knows of one stored series: as much as the record policy needs."""

    channels: frozenset[str] | None  # None: a new series, whose first record sets them
    steps: list[int]  # epoch ms of its newest stored steps, sorted (a bounded number)
    step_ms: int = 1  # the series' step; 1 until it has two readings (nothing is floored)
    settled: bool = False  # its step was inferred from a full set of kept steps: it stays
    # A step too far ahead, waiting for a record to confirm it (see windows.JumpRule).
    held: HeldJump[tuple[RawRecord, Observation]] | None = None

    @property
    def newest(self) -> int | None:
        """Its newest stored step (epoch ms), None before the first."""
        return self.steps[-1] if self.steps else None

    def holds(self, step: int) -> bool:
        i = bisect.bisect_left(self.steps, step)
        return i < len(self.steps) and self.steps[i] == step

    def is_late(self, step: int, grace_ms: int) -> bool:
        """As in serve: older than the newest step whose grace period has passed.

        The steps kept cover the grace period and one more, so a forgotten step is late too.
        """
        if not self.steps:
            return False
        placed = bisect.bisect_right(self.steps, self.steps[-1] - grace_ms)
        return placed > 0 and step <= self.steps[placed - 1]

    def place(self, step: int, keep: int) -> None:
        """Remember a stored step, forgetting the oldest beyond ``keep``."""
        bisect.insort(self.steps, step)
        if len(self.steps) > keep:
            del self.steps[0]


def set_steps(
    stored: dict[str, StoredSeries],
    accepted: list[tuple[RawRecord, Observation]],
    step_ms: int | None,
) -> None:
    """Each series' step: ``step_ms`` when set, else inferred from its stored and new readings
    until it has ``KEPT_STEPS`` of them (then it is settled: a series' step does not change)."""
    if step_ms is not None:
        for series in stored.values():
            series.step_ms = step_ms
        return
    new: dict[str, list[int]] = {}
    for _, obs in accepted:
        if not stored[obs.series].settled:
            new.setdefault(obs.series, []).append(obs.ts_ms)
    for series_id, readings in new.items():
        series = stored[series_id]
        series.step_ms = infer_step_ms(series.steps + readings) or 1
        series.settled = len(series.steps) >= KEPT_STEPS


class StoreContract:
    """The channels of the stored series: a new series must share one, or it is refused.

    One store holds one kind of data; a series of another dataset (no channel in common) would
    leave training nothing to stack. Read from the table's schema once, when the first new
    series comes.
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
                "ingest this data with another ROLLCAST_STORE_URI"
            )
        self._channels |= channels
        return None


@dataclass(frozen=True)
class Admission:
    """What a record must pass to be stored; the same for every batch of an ingest run."""

    policy: RecordPolicy
    contract: StoreContract  # a new series must share a channel with the stored ones
    step_ms: int | None = None  # every series' step; None: each one's own, from its readings

    @functools.cached_property
    def jumps(self) -> JumpRule:
        """The policy's rule against one record moving a series' clock far ahead."""
        return self.policy.jump_rule()


@dataclass
class Admitted:
    """What :func:`admit` made of a flush's records so far."""

    kept: list[tuple[RawRecord, Observation]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0

    def add(self, record: RawRecord, outcome: Observation | DeadLetter | None) -> None:
        """Count one record's outcome: stored, refused, or (None) a duplicate."""
        if isinstance(outcome, DeadLetter):
            self.dead.append(outcome)
        elif outcome is None:
            self.duplicates += 1
        else:
            self.kept.append((record, outcome))


def source_id(record: RawRecord, epoch: int = 0) -> str:
    """The name under which the table records a partition's newest ingested offset, in
    ``epoch`` of the partition (see :class:`SourceOffsets`)."""
    return partition_source(record.topic, record.partition, epoch)


def partition_source(topic: str, partition: int, epoch: int = 0) -> str:
    """``rollcast:<topic>:<partition>``; from the partition's second epoch, ``:epoch<n>`` after."""
    base = f"rollcast:{topic}:{partition}"
    return base if epoch == 0 else f"{base}:epoch{epoch}"


# Epochs of a partition looked up in one read of the table; more are read only if all are used.
EPOCHS_PER_READ = 16


class SourceOffsets:
    """Each source partition's newest offset and newest record time the table holds.

    A record at or below its partition's stored offset was stored before (a replay) and is
    skipped, unless it is newer (Kafka record time) than every record stored from that partition:
    then the partition's offsets started again (a broker replaced by an empty one, a topic made
    again), and its records would all be skipped. Such a record starts a new *epoch* of the
    partition: a source of its own (:func:`partition_source`), whose offsets count from nothing.

    A reset whose first records are older than the newest stored one (a producer's clock behind)
    goes unnoticed: those records are skipped, as are those of a table written before record
    times were kept. Cost: two dict reads per record; the table is read once per partition.
    """

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}  # source id -> newest offset the table holds
        self.newest_ms: dict[str, int] = {}  # source id -> newest record time the table holds
        self._epochs: dict[tuple[str, int], int] = {}  # (topic, partition) -> current epoch
        # The source of each record the last not_stored returned (a flush may span two epochs).
        self._fresh: dict[int, str] = {}

    def source(self, record: RawRecord) -> str:
        return source_id(record, self._epochs.get((record.topic, record.partition), 0))

    def not_stored(self, records: list[RawRecord], store: SeriesStore) -> list[RawRecord]:
        """The records the table does not hold, in order; a partition found restarted gets a
        new epoch first (logged as a warning)."""
        self._learn({(r.topic, r.partition) for r in records}, store)
        fresh, self._fresh = [], {}
        for record in records:
            source = self.source(record)
            if record.offset <= self.offsets.get(source, -1):
                if record.timestamp_ms <= self.newest_ms.get(source, record.timestamp_ms):
                    continue  # stored before: a replay
                source = self._new_epoch(record, source, store)
            fresh.append(record)
            self._fresh[id(record)] = source
        return fresh

    def ranges(self, records: Iterable[RawRecord]) -> dict[str, OffsetRange]:
        """Each source's first and last offset and newest time among ``records`` (not rewound),
        which the last :meth:`not_stored` returned."""
        ranges: dict[str, OffsetRange] = {}
        for record in records:
            if record.rewound:
                continue
            source = self._fresh.get(id(record)) or self.source(record)
            span = ranges.get(source) or OffsetRange(record.offset, record.offset, 0)
            first, last = min(span.first, record.offset), max(span.last, record.offset)
            ranges[source] = OffsetRange(first, last, max(span.newest_ms or 0, record.timestamp_ms))
        return ranges

    def stored(self, ranges: dict[str, OffsetRange]) -> None:
        """Remember what a write recorded."""
        for source, span in ranges.items():
            self.offsets[source] = max(self.offsets.get(source, -1), span.last)
            if span.newest_ms is not None:
                self.newest_ms[source] = max(self.newest_ms.get(source, 0), span.newest_ms)

    def taken(self, versions: dict[str, int], store: SeriesStore) -> None:
        """Another writer stored offsets up to ``versions``: remember them, and their times."""
        self.offsets.update(versions)
        self.newest_ms.update(store.ingested_times(sorted(versions)))

    def _learn(self, partitions: set[tuple[str, int]], store: SeriesStore) -> None:
        """Read each partition not seen yet: its newest epoch, and that epoch's offset and time."""
        new = sorted(partitions - self._epochs.keys())
        if not new:
            return
        found = stored_epochs(store, new)
        sources = []
        for topic, partition in new:
            epoch, offset = found.get((topic, partition), (0, None))
            self._epochs[(topic, partition)] = epoch
            sources.append(partition_source(topic, partition, epoch))
            if offset is not None:
                self.offsets[sources[-1]] = offset
        self.newest_ms.update(store.ingested_times(sources))

    def _new_epoch(self, record: RawRecord, old: str, store: SeriesStore) -> str:
        """Start the next epoch of ``record``'s partition, which restarted its offsets; return
        its source."""
        key = (record.topic, record.partition)
        self._epochs[key] = self._epochs.get(key, 0) + 1
        source = self.source(record)
        logger.warning(
            "partition %s/%d restarted its offsets: record %d (written %s) is newer than every "
            "record stored from it (up to offset %d, written %s): a broker replaced by an empty "
            "one, or the topic made again; storing its records as epoch %d (%s)",
            record.topic,
            record.partition,
            record.offset,
            _utc(record.timestamp_ms),
            self.offsets[old],
            _utc(self.newest_ms[old]),
            self._epochs[key],
            source,
        )
        self.offsets.update(store.ingested_offsets([source]))  # another writer may be there
        self.newest_ms.update(store.ingested_times([source]))
        return source


def stored_epochs(
    store: SeriesStore, partitions: list[tuple[str, int]]
) -> dict[tuple[str, int], tuple[int, int]]:
    """Each partition's newest epoch that the table records an offset for, with that offset.

    Epochs are read ``EPOCHS_PER_READ`` at a time, a further read only for partitions that
    used them all.
    """
    found: dict[tuple[str, int], tuple[int, int]] = {}
    first = 0
    while partitions:
        epochs = range(first, first + EPOCHS_PER_READ)
        names = {partition_source(t, p, e): (t, p, e) for t, p in partitions for e in epochs}
        offsets = store.ingested_offsets(list(names))
        for name, offset in offsets.items():
            topic, partition, epoch = names[name]
            if epoch >= found.get((topic, partition), (-1, 0))[0]:
                found[(topic, partition)] = (epoch, offset)
        partitions = [tp for tp in partitions if found.get(tp, (0, 0))[0] == epochs[-1]]
        first += EPOCHS_PER_READ
    return found


def _utc(epoch_ms: int) -> str:
    return pd.Timestamp(epoch_ms, unit="ms", tz="UTC").isoformat()


class IngestLedger:
    """What ingest knows of the table, in memory: each series' :class:`StoredSeries` and each
    source partition's newest stored offset.

    Rebuilt at start by one streamed read (:meth:`rebuilt`), then kept up to date by the flushes.
    At most ``max_series`` series are held (least recently seen dropped): about 0.5 KB each. A
    dropped series that comes back is new again: its rows are still stored, and a repeated step
    is removed on read and by compaction.
    """

    def __init__(
        self, admission: Admission, recent: dict[str, RecentSteps], max_series: int
    ) -> None:
        self.admission, self.max_series = admission, max_series
        self.keep = admission.policy.grace_steps + KEPT_STEPS
        self.series: OrderedDict[str, StoredSeries] = OrderedDict(
            (sid, StoredSeries(r.channels, r.steps)) for sid, r in recent.items()
        )
        self.sources = SourceOffsets()  # each source partition's newest stored offset

    @classmethod
    def rebuilt(cls, store: SeriesStore, admission: Admission, max_series: int) -> IngestLedger:
        started = time.monotonic()
        keep = admission.policy.grace_steps + KEPT_STEPS
        ledger = cls(admission, store.recent_steps(keep), max_series)
        logger.info(
            "ingest state of %d stored series read in %.1f s",
            len(ledger.series),
            time.monotonic() - started,
        )
        return ledger

    def touch(self, series_ids: Iterable[str]) -> dict[str, StoredSeries]:
        """The state of each series, new ones created; the least recently seen dropped."""
        touched = {}
        for series_id in series_ids:
            state = self.series.get(series_id)
            if state is None:
                state = self.series[series_id] = StoredSeries(None, [])
            else:
                self.series.move_to_end(series_id)
            touched[series_id] = state
        while len(self.series) > self.max_series:
            self.series.popitem(last=False)
        return touched

    def not_stored(self, records: list[RawRecord], store: SeriesStore) -> list[RawRecord]:
        """The records the table does not hold (see :class:`SourceOffsets`)."""
        return self.sources.not_stored(records, store)


def admit(
    accepted: list[tuple[RawRecord, Observation]],
    stored: dict[str, StoredSeries],
    admission: Admission,
    keep: int,
) -> tuple[list[tuple[RawRecord, Observation]], list[DeadLetter], int]:
    """Apply the per-series policy as serve does: (records to store, dead letters, duplicates).

    Timestamps are floored to the step; the first observation of a step wins; a step older than
    the grace period allows is late; channels must be the series' own, and a new series'
    must share one with the store's (``admission.contract``). A step too far ahead of its
    series' newest is held until another record of the flush confirms it
    (:class:`pipeline.windows.JumpRule`); one still unconfirmed when the flush ends is
    dead-lettered as ``future`` here, before the flush's offsets are stored and committed, so
    a crash loses no record: each is stored or dead-lettered. Its time stays in memory, a
    claim the series' next far record can confirm (lost at a restart: that record waits again).
    """
    admitted = Admitted()
    for record, obs in accepted:
        try:
            _admit_one(record, obs, stored[obs.series], admission, keep, admitted)
        except Exception as err:  # no record may stop the loop: it becomes a dead letter
            admitted.dead.append(invalid_letter(record, err))
    for series in stored.values():
        if series.held is not None and series.held.item is not None:
            _drop_held(series, BATCH_ENDED, admitted)
    return admitted.kept, admitted.dead, admitted.duplicates


def _admit_one(
    record: RawRecord,
    obs: Observation,
    series: StoredSeries,
    admission: Admission,
    keep: int,
    admitted: Admitted,
) -> None:
    """Add to ``admitted`` the step-aligned observation to store, its dead letter, or its
    duplicate; or hold it (or confirm a held one) if it lies far ahead."""
    if series.channels is None:
        if (refusal := admission.contract.refusal(frozenset(obs.values))) is not None:
            return admitted.add(record, DeadLetter(record, OTHER_CONTRACT, refusal))
        series.channels = frozenset(obs.values)
    if (problem := channel_problem(series.channels, obs.values)) is not None:
        return admitted.add(record, DeadLetter(record, *problem))
    aligned = Observation(obs.series, obs.ts_ms - obs.ts_ms % series.step_ms, obs.values)
    rule = admission.jumps
    jump = rule.judge(series.newest, aligned.ts_ms, series.step_ms, series.held)
    if jump is Jump.WITHIN:
        admitted.add(record, _admit_within(record, aligned, series, admission, keep))
        held, newest = series.held, series.newest
        if held is not None and newest is not None and rule.outrun(newest, series.step_ms, held):
            _drop_held(series, OUTRUN, admitted)
    elif jump is Jump.REPEAT:
        admitted.duplicates += 1
    elif jump is Jump.HELD:
        _drop_held(series, DISPLACED, admitted)
        newest = series.newest or 0  # HELD: the series has a newest step
        series.held = rule.hold(newest, aligned.ts_ms, series.step_ms, (record, aligned))
    else:
        _confirm(series, (record, aligned), keep, admitted)
    return None


def _admit_within(
    record: RawRecord, aligned: Observation, series: StoredSeries, admission: Admission, keep: int
) -> Observation | DeadLetter | None:
    """The observation to store, or None for a duplicate, or its ``late`` dead letter."""
    step = aligned.ts_ms
    if series.holds(step):
        return None
    if series.is_late(step, admission.policy.grace_steps * series.step_ms):
        newest = series.steps[-1]
        return DeadLetter(record, LATE, f"older than the grace period allows ({newest})")
    series.place(step, keep)
    return aligned


def _confirm(
    series: StoredSeries,
    confirming: tuple[RawRecord, Observation],
    keep: int,
    admitted: Admitted,
) -> None:
    """Move the series' clock: store the held step (unless only its time is left) and the
    confirming one, in step order."""
    held, series.held = series.held, None
    both = [confirming] if held is None or held.item is None else [held.item, confirming]
    for record, aligned in sorted(both, key=lambda pair: pair[1].ts_ms):
        series.place(aligned.ts_ms, keep)
        admitted.kept.append((record, aligned))


def _drop_held(series: StoredSeries, why: str, admitted: Admitted) -> None:
    """Refuse the series' held record as ``future`` (``why`` says when), keeping its time as a
    claim only at a flush's end."""
    held = series.held
    if held is None:
        return
    series.held = JumpRule.left_after(held, why)
    if held.item is not None:
        record = held.item[0]
        admitted.dead.append(DeadLetter(record, FUTURE, JumpRule.refusal(held, why)))


@dataclass(frozen=True)
class FlushPolicy:
    """When gathered polls are written: at ``records`` records, or ``interval_s`` after the
    first unwritten one, or when a poll comes back empty."""

    records: int = 50_000
    interval_s: float = 5.0


@dataclass(frozen=True)
class IngestPlan:
    """How one ingest run goes: the record policy, each series' step, and when it stops."""

    idle_s: float  # stop once this long passed without a record
    freq: str | None = None  # every series' step; None: each one's own, from its readings
    policy: RecordPolicy = DEFAULT_POLICY
    max_records: int | None = None  # stop once this many were read, idle or not
    flush: FlushPolicy = FlushPolicy()
    max_series: int = 1_000_000  # series whose state is held in memory


def ingest_batch(
    records: list[RawRecord],
    store: SeriesStore,
    dead_letters: Sink,
    ledger: IngestLedger,
    report: IngestReport,
) -> None:
    """Handle one flush of records; on return they are durable and may be committed."""
    report.records_in += len(records)
    fresh = ledger.not_stored(records, store)
    report.already_stored += len(records) - len(fresh)
    admission = ledger.admission
    accepted, dead = triage(fresh, admission.policy)
    stored = ledger.touch(obs.series for _, obs in accepted)
    set_steps(stored, accepted, admission.step_ms)
    kept, refused, duplicates = admit(accepted, stored, admission, ledger.keep)
    for letter in dead + refused:
        dead_letters.send_dead_letter(letter)
        report.dead_letters[letter.reason] += 1
    report.rows_written += store_flush(store, fresh, kept, ledger)
    dead_letters.flush()
    report.duplicates += duplicates
    report.flushes += 1
    report.series.update(obs.series for _, obs in kept)


def store_flush(
    store: SeriesStore,
    records: list[RawRecord],
    kept: list[tuple[RawRecord, Observation]],
    ledger: IngestLedger,
) -> int:
    """Append the kept observations with the flush's offsets; return the rows written.

    Offsets another writer stored first are left to it: their records are dropped and the
    rest written (each offset reaches the table once).
    """
    while True:
        frame = observations_to_frame([obs for _, obs in kept])
        ranges = ledger.sources.ranges(records)
        try:
            written = store.append(frame, ranges)
        except OffsetsTakenError as taken:
            logger.info("another writer stored offsets up to %s: skipping them", taken.versions)
            ledger.sources.taken(taken.versions, store)
            newer = {id(r) for r in ledger.not_stored(records, store)}
            records = [r for r in records if id(r) in newer]
            kept = [(r, obs) for r, obs in kept if id(r) in newer]
            continue
        if written:  # an empty frame records no offsets
            ledger.sources.stored(ranges)
        return written


class PendingRecords:
    """Polled records not yet written, and when the next flush is due."""

    def __init__(self, policy: FlushPolicy) -> None:
        self.policy = policy
        self.records: list[RawRecord] = []
        self._since = time.monotonic()

    def add(self, records: list[RawRecord]) -> None:
        if records and not self.records:
            self._since = time.monotonic()
        self.records += records

    def due(self, got_records: bool) -> bool:
        if not self.records:
            return False
        full = len(self.records) >= self.policy.records
        return full or not got_records or time.monotonic() - self._since >= self.policy.interval_s

    def take(self) -> list[RawRecord]:
        records, self.records = self.records, []
        return records


def run_ingest(
    source: Source, store: SeriesStore, dead_letters: Sink, plan: IngestPlan
) -> IngestReport:
    """Ingest until ``plan.idle_s`` pass without a record (or ``plan.max_records`` are read), or
    a stop is requested (:mod:`pipeline.shutdown`: SIGTERM).

    Each series is stored on its own step, inferred from its readings; ``plan.freq`` overrides it.
    On a stop, the flush under way is finished (its Kafka offsets are committed only if its dead
    letters were acknowledged) and the records polled since are abandoned: uncommitted, they are
    read again by the next run.
    """
    report, progress = IngestReport(), Progress("ingest", plan.max_records, logger)
    step_ms = freq_to_ms(plan.freq) if plan.freq else None
    admission = Admission(plan.policy, StoreContract(store), step_ms)
    ledger = IngestLedger.rebuilt(store, admission, plan.max_series)
    pending, idle = PendingRecords(plan.flush), IdleClock(plan.idle_s)

    def flush() -> None:
        records = pending.take()
        ingest_batch(records, store, dead_letters, ledger, report)
        source.commit(records)
        progress.advance(len(records), _progress_note(report))

    try:
        while not shutdown.requested() and (
            plan.max_records is None or report.records_in + len(pending.records) < plan.max_records
        ):
            records = source.poll(POLL_TIMEOUT_S)
            pending.add(records)
            if pending.due(bool(records)) and not shutdown.requested():
                flush()
            if idle.expired(bool(records), source.assigned()):
                break
        if pending.records and not shutdown.requested():
            flush()
    except shutdown.StopRequestedError as stop:
        logger.warning("%s", stop)
    if pending.records:
        logger.warning("stopping: %d polled records not stored, read again", len(pending.records))
    progress.finish(f"{_progress_note(report)}, {report.duplicates} duplicates")
    return report


def _progress_note(report: IngestReport) -> str:
    return f"{report.rows_written} rows stored, dead letters: {by_reason(report.dead_letters)}"


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
