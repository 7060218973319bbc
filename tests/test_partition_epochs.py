"""Ingest tells a replay from a partition whose offsets started again (a broker replaced by an
empty one): the first is skipped, the second stored as a new epoch of the partition.

Pure tests: ingest batches against a series table in a temporary folder; dead letters go to the
in-memory transport.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from pipeline.delta_store import DeltaSeriesStore
from pipeline.ingest import (
    Admission,
    IngestLedger,
    IngestReport,
    StoreContract,
    ingest_batch,
    partition_source,
)
from pipeline.inmemory import MemoryTransport
from pipeline.records import DEFAULT_POLICY, RawRecord

HOUR_MS = 3_600_000
START_HOUR = int(time.time() * 1000) // HOUR_MS - 200  # in the past: no step is in the future
TOPIC = "observations"
NOW_MS = int(time.time() * 1000)  # when the records are written (Kafka's record time)


def record(offset: int, hour: int, written_ms: int, partition: int = 0) -> RawRecord:
    """Series ``a`` at ``hour`` after the start, at ``offset``, written ``written_ms`` after now."""
    ts = (START_HOUR + hour) * HOUR_MS
    value = json.dumps({"series": "a", "ts": ts, "values": {"load": float(hour)}}).encode()
    return RawRecord(TOPIC, partition, offset, b"a", value, NOW_MS + written_ms)


class Ingest:
    """One ingest run: its ledger read from the table at start, as after a restart."""

    def __init__(self, store: DeltaSeriesStore) -> None:
        self.store, self.report = store, IngestReport()
        admission = Admission(DEFAULT_POLICY, StoreContract(store), HOUR_MS)
        self.ledger = IngestLedger.rebuilt(store, admission, max_series=1000)

    def flush(self, records: list[RawRecord]) -> IngestReport:
        ingest_batch(records, self.store, MemoryTransport().sink(), self.ledger, self.report)
        return self.report


def stored_hours(store: DeltaSeriesStore) -> list[int]:
    return [int(t.value // 10**6) // HOUR_MS - START_HOUR for t in store.read("a")["ts"]]


def test_a_replay_is_skipped_and_a_restarted_partition_stored_as_a_new_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeltaSeriesStore(str(tmp_path / "series"))
    Ingest(store).flush([record(i, i, 1_000 + i) for i in range(10)])

    replayed = Ingest(store).flush([record(i, i, 1_000 + i) for i in range(5, 10)])
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest"):
        restarted = Ingest(store)  # the broker came back empty: offsets from 0, written later
        restarted.flush([record(i, 10 + i, 9_000 + i) for i in range(5)])
        restarted.flush([record(5 + i, 15 + i, 9_100 + i) for i in range(3)])
    again = Ingest(store).flush([record(i, 10 + i, 9_000 + i) for i in range(8)])

    assert replayed.already_stored == 5 and replayed.rows_written == 0
    assert restarted.report.rows_written == 8 and restarted.report.already_stored == 0
    assert again.already_stored == 8 and again.rows_written == 0  # the new epoch is replayed
    assert stored_hours(store) == list(range(18))
    assert store.ingested_offsets([partition_source(TOPIC, 0), partition_source(TOPIC, 0, 1)]) == {
        partition_source(TOPIC, 0): 9,
        partition_source(TOPIC, 0, 1): 7,
    }
    assert f"partition {TOPIC}/0 restarted its offsets: record 0" in caplog.text
    assert "up to offset 9" in caplog.text and "epoch 1" in caplog.text


def test_a_flush_spanning_the_restart_records_both_epochs(tmp_path: Path) -> None:
    store = DeltaSeriesStore(str(tmp_path / "series"))
    Ingest(store).flush([record(i, i, 1_000 + i) for i in range(10)])
    old_tail = [record(10 + i, 10 + i, 2_000 + i) for i in range(2)]  # read before the outage
    new_head = [record(i, 12 + i, 9_000 + i) for i in range(3)]  # read after it, same flush

    report = Ingest(store).flush(old_tail + new_head)

    assert report.rows_written == 5
    assert stored_hours(store) == list(range(15))
    assert store.ingested_offsets([partition_source(TOPIC, 0), partition_source(TOPIC, 0, 1)]) == {
        partition_source(TOPIC, 0): 11,
        partition_source(TOPIC, 0, 1): 2,
    }


def test_a_second_restart_opens_a_second_epoch_and_other_partitions_keep_theirs(
    tmp_path: Path,
) -> None:
    store = DeltaSeriesStore(str(tmp_path / "series"))
    Ingest(store).flush([record(i, i, 1_000 + i) for i in range(4)])
    Ingest(store).flush([record(i, 4 + i, 5_000 + i) for i in range(4)])  # epoch 1
    other = RawRecord(TOPIC, 1, 0, b"b", b'{"series": "b", "ts": 0, "values": {"load": 1}}', NOW_MS)

    report = Ingest(store).flush([record(i, 8 + i, 9_000 + i) for i in range(2)] + [other])

    assert report.rows_written == 3
    assert stored_hours(store) == list(range(10))
    assert store.ingested_offsets([partition_source(TOPIC, 0, 2), partition_source(TOPIC, 1)]) == {
        partition_source(TOPIC, 0, 2): 1,
        partition_source(TOPIC, 1): 0,
    }
