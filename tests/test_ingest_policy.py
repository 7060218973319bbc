"""Ingest applies the serve loop's record policy: it refuses the same records for the same reasons.

Pure tests: the ingest batch runs against a series table in a temporary folder, the serve side
is the :class:`~pipeline.serve.RollingForecaster`; both send their dead letters to the in-memory
transport, where the tests read them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.delta_store import DeltaSeriesStore
from pipeline.forecast import LoadedForecaster
from pipeline.ingest import Admission, IngestLedger, IngestReport, StoreContract, ingest_batch
from pipeline.inmemory import MemoryTransport
from pipeline.model import ForecasterConfig, build_forecaster
from pipeline.records import (
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
@given(stream=streams, grace_steps=st.integers(min_value=0, max_value=3))
def test_ingest_and_serve_refuse_the_same_records(
    tmp_path_factory: pytest.TempPathFactory, stream: list, grace_steps: int
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
    policy = RecordPolicy(grace_steps=grace_steps)
    config = ForecasterConfig(("load",), LOOKBACK, 2, architecture="repeat_last", max_gap=LOOKBACK)
    torch.manual_seed(0)
    rolling = RollingForecaster(LoadedForecaster("m", "1", build_forecaster(config)), 10, policy)
    served = MemoryTransport()

    serve_batch(records, rolling, served.sink(), new_stats(rolling))
    ingested = ingest(records, table(tmp_path_factory.mktemp("store")), policy)

    assert refusals(ingested) == refusals(served.messages(served.topics.deadletter))


def _first_of_series(stream: list) -> list[bool]:
    seen: set[str] = set()
    firsts = []
    for series, _, _ in stream:
        firsts.append(series not in seen)
        seen.add(series)
    return firsts
