"""Ingest applies the serve loop's record policy: it refuses the same records for the same reasons.

Pure tests: the ingest batch runs against a series table in a temporary folder, the serve side
is the :class:`~pipeline.serve.RollingForecaster`; both send their dead letters to the in-memory
transport, where the tests read them back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.delta_store import DeltaSeriesStore
from pipeline.forecast import LoadedForecaster
from pipeline.ingest import Admission, IngestLedger, IngestReport, StoreContract, ingest_batch
from pipeline.inmemory import MemoryTransport
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.records import (
    DEFAULT_POLICY,
    FUTURE,
    LATE,
    MISSING_CHANNEL,
    OTHER_CONTRACT,
    UNKNOWN_CHANNEL,
    RawRecord,
    RecordPolicy,
)
from pipeline.serve import RollingForecaster, new_stats, serve_batch

HOUR_MS = 3_600_000
LOOKBACK = 8


def record(offset: int, series: str, ts_ms: int, values: dict[str, float]) -> RawRecord:
    payload = json.dumps({"series": series, "ts": ts_ms, "values": values}).encode()
    return RawRecord("observations", 0, offset, series.encode(), payload)


def ingest(
    records: list[RawRecord], store: DeltaSeriesStore, policy: RecordPolicy
) -> list[RawRecord]:
    """One ingest run of one flush of hourly series, its state read from the table as at a
    restart; the dead letters it sent."""
    transport = MemoryTransport()
    admission = Admission(policy, StoreContract(store), HOUR_MS)
    ledger = IngestLedger.rebuilt(store, admission, max_series=1000)
    ingest_batch(records, store, transport.sink(), ledger, IngestReport())
    return transport.messages(transport.topics.deadletter)


def table(path: Path) -> DeltaSeriesStore:
    return DeltaSeriesStore(str(path / "series"))


def refusals(letters: list[RawRecord]) -> dict[int, str | None]:
    """The reason each refused record was dead-lettered for, by its offset."""
    return {int(str(d.header("source_offset"))): d.header("reason") for d in letters}


def test_a_stored_series_refuses_foreign_channels_and_old_steps(tmp_path: Path) -> None:
    store, policy = table(tmp_path), RecordPolicy()
    ingest([record(i, "a", i * HOUR_MS, {"OT": 1.0}) for i in range(10)], store, policy)

    letters = ingest(
        [
            record(20, "a", 10 * HOUR_MS, {"OT": 1.0, "foo": 2.0}),
            record(21, "a", 11 * HOUR_MS, {"HUFL": 1.0}),
            record(22, "a", -HOUR_MS, {"OT": 1.0}),  # 1969, before the newest stored step
            record(23, "a", 3 * HOUR_MS, {"OT": 9.0}),  # a replay: a duplicate, not late
            record(24, "a", 10 * HOUR_MS + 60_000, {"OT": 2.0}),  # floored to step 10
            record(25, "a", 10 * HOUR_MS + 120_000, {"OT": 3.0}),  # same step: the first wins
        ],
        store,
        policy,
    )

    assert refusals(letters) == {20: UNKNOWN_CHANNEL, 21: MISSING_CHANNEL, 22: LATE}
    stored = store.read("a")
    assert len(stored) == 11 and stored["OT"].iloc[3] == 1.0 and stored["OT"].iloc[-1] == 2.0
    assert list(stored.columns) == ["series", "ts", "OT"]


def test_a_series_of_another_dataset_is_refused_by_the_store(tmp_path: Path) -> None:
    store, policy = table(tmp_path), RecordPolicy()
    ingest(
        [record(i, "fleet-1", i * HOUR_MS, {"load": 1.0, "temp": 2.0}) for i in range(5)],
        store,
        policy,
    )

    etth1 = [record(10 + i, "ETTh1", i * HOUR_MS, {"OT": 1.0, "HUFL": 2.0}) for i in range(5)]
    letters = ingest([*etth1, record(20, "fleet-2", 0, {"load": 3.0, "temp": 4.0})], store, policy)

    assert refusals(letters) == dict.fromkeys(range(10, 15), OTHER_CONTRACT)
    assert "ROLLCAST_STORE_URI" in (letters[0].header("detail") or "")
    assert store.series_ids() == ["fleet-1", "fleet-2"]


# Steps stay inside one window and gaps inside max_gap, where serve remembers every step it saw.
steps = st.integers(min_value=0, max_value=LOOKBACK - 1)
channel_sets = st.sampled_from([("load",), ("load", "x"), ("x",)])
streams = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), steps, channel_sets), min_size=1, max_size=40
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stream=streams,
    grace_steps=st.integers(min_value=0, max_value=3),
    max_jump_steps=st.sampled_from([1, 2, 3, 12]),
    batch_size=st.sampled_from([4, 40]),  # ingest's flushes and serve's polls, alike
)
def test_ingest_and_serve_refuse_the_same_records(
    tmp_path_factory: pytest.TempPathFactory,
    stream: list,
    grace_steps: int,
    max_jump_steps: int,
    batch_size: int,
) -> None:
    # Serve cannot hold a series whose first record lacks the model's channels; ingest can.
    firsts = _first_of_series(stream)
    stream = [
        (s, step, ("load", *c) if c == ("x",) and first else c)
        for (s, step, c), first in zip(stream, firsts, strict=True)
    ]
    records = [
        record(i, series, step * HOUR_MS, dict.fromkeys(channels, float(step)))
        for i, (series, step, channels) in enumerate(stream)
    ]
    policy = RecordPolicy(grace_steps=grace_steps, max_jump_steps=max_jump_steps)
    loops = Loops(tmp_path_factory.mktemp("store"), policy)

    for first in range(0, len(records), batch_size):
        loops.batch(records[first : first + batch_size])

    ingested, served = loops.refusals()
    assert ingested == served


def forecaster(policy: RecordPolicy) -> RollingForecaster:
    """A serve loop's windows, for hourly series of the channel ``load``."""
    config = ForecasterConfig(("load",), LOOKBACK, 2, architecture="repeat_last", max_gap=LOOKBACK)
    torch.manual_seed(0)
    return RollingForecaster(LoadedForecaster("m", "1", build_forecaster(config)), 10, policy)


def _first_of_series(stream: list) -> list[bool]:
    seen: set[str] = set()
    firsts = []
    for series, _, _ in stream:
        firsts.append(series not in seen)
        seen.add(series)
    return firsts


# --- a series' clock never jumps on the word of one record -------------------------------------


class Loops:
    """One ingest run and one serve loop, fed the same batches (ingest's flushes, serve's polls)."""

    def __init__(self, path: Path, policy: RecordPolicy = DEFAULT_POLICY) -> None:
        self.store, self.ingested, self.served = table(path), MemoryTransport(), MemoryTransport()
        self.ledger = IngestLedger(Admission(policy, StoreContract(self.store), HOUR_MS), {}, 1000)
        self.report, self.rolling = IngestReport(), forecaster(policy)
        self.stats = new_stats(self.rolling)

    def batch(self, records: list[RawRecord]) -> None:
        ingest_batch(records, self.store, self.ingested.sink(), self.ledger, self.report)
        serve_batch(records, self.rolling, self.served.sink(), self.stats)

    def refusals(self) -> tuple[dict[int, str | None], dict[int, str | None]]:
        """(ingest's, serve's) reason for each refused record, by its offset."""
        served = refusals(self.served.messages(self.served.topics.deadletter))
        return refusals(self.ingested.messages(self.ingested.topics.deadletter)), served

    def stored_hours(self) -> list[int]:
        return [int(t.value // 10**6) // HOUR_MS for t in self.store.read("a")["ts"]]

    def served_hours(self) -> int | None:
        state = self.rolling.series_state("a")
        newest = None if state is None else state.window.newest_ms
        return None if newest is None else newest // HOUR_MS


def this_hour() -> int:
    """The current hour, in hours since the epoch: live timestamps, as the issue saw them."""
    return int(time.time() * 1000) // HOUR_MS


def hourly(offset: int, hours: range | list[int]) -> list[RawRecord]:
    return [record(offset + i, "a", h * HOUR_MS, {"load": float(h)}) for i, h in enumerate(hours)]


def feed(loops: Loops, records: list[RawRecord], one_per_batch: bool) -> None:
    for batch in [[r] for r in records] if one_per_batch else [records]:
        loops.batch(batch)


@pytest.mark.parametrize("one_per_batch", [False, True])
def test_one_record_far_ahead_moves_no_clock(tmp_path: Path, one_per_batch: bool) -> None:
    now = this_hour()
    history, later = range(now - 118, now - 58), range(now - 58, now + 1)
    stray = record(60, "a", (now + 23) * HOUR_MS, {"load": 1.0})  # inside max_ahead_s
    loops = Loops(tmp_path)

    feed(loops, [*hourly(0, history), stray, *hourly(61, later)], one_per_batch)

    assert loops.refusals() == ({60: FUTURE}, {60: FUTURE})
    assert loops.stored_hours() == [*history, *later]  # all 119 good ones
    assert loops.served_hours() == now
    letter = loops.served.messages(loops.served.topics.deadletter)[0]
    assert "held: 82 steps ahead" in (letter.header("detail") or "")  # of step now - 59


@pytest.mark.parametrize("one_per_batch", [False, True])
def test_a_backfill_behind_one_current_record_goes_on(tmp_path: Path, one_per_batch: bool) -> None:
    now = this_hour()
    stored, backfill = range(now - 69, now - 58), range(now - 58, now + 1)
    loops = Loops(tmp_path)
    loops.batch(hourly(0, stored))

    live = record(20, "a", now * HOUR_MS, {"load": -1.0})
    feed(loops, [live, *hourly(21, backfill)], one_per_batch)

    assert loops.refusals() == ({20: FUTURE}, {20: FUTURE})  # the stray is the one refused
    assert loops.stored_hours() == [*stored, *backfill]  # the backfill lost nothing
    assert loops.store.read("a")["load"].iloc[-1] == float(now)  # the backfill's own reading


def test_a_series_back_from_an_outage_resumes_at_its_second_record(tmp_path: Path) -> None:
    now = this_hour()
    before, after = range(now - 71, now - 59), range(now - 11, now + 1)  # 48 h without data
    loops = Loops(tmp_path)
    loops.batch(hourly(0, before))

    loops.batch(hourly(20, after))  # one flush, one poll: the second record confirms the first

    assert loops.refusals() == ({}, {})
    assert loops.stored_hours() == [*before, *after]
    assert loops.served_hours() == now
    issued = [json.loads(f.value or b"{}") for f in loops.served.messages("forecasts")]
    assert len(issued) == len(before) - LOOKBACK + 1 + len(after) - LOOKBACK + 1


def test_an_outage_then_one_record_a_batch_costs_at_most_the_first(tmp_path: Path) -> None:
    now = this_hour()
    before, after = range(now - 71, now - 59), range(now - 11, now + 1)
    loops = Loops(tmp_path)
    loops.batch(hourly(0, before))

    feed(loops, hourly(20, after), one_per_batch=True)

    # Each batch decides its records before its offsets are committed: the first one back,
    # unconfirmed in its batch, is `future`; its time confirms the second, and the series resumes.
    assert loops.refusals() == ({20: FUTURE}, {20: FUTURE})
    assert loops.stored_hours() == [*before, *after[1:]]
    assert loops.served_hours() == now


def test_a_held_record_is_decided_before_its_batch_returns(tmp_path: Path) -> None:
    now = this_hour()
    loops = Loops(tmp_path)
    loops.batch(hourly(0, range(now - 30, now - 20)))
    far = record(10, "a", now * HOUR_MS, {"load": 1.0})

    loops.batch([far])  # held, then its batch ends unconfirmed

    # Dead-lettered (acknowledged) before the batch returned, so before any offset is
    # committed; re-read after a crash, it is refused the same way, and never stored.
    assert loops.refusals() == ({10: FUTURE}, {10: FUTURE})
    assert refusals(ingest([far], loops.store, RecordPolicy())) in ({10: FUTURE}, {})
    assert now not in loops.stored_hours()
