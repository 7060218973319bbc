"""The series table on object storage: a real S3-compatible HTTP server (moto, started by a
fixture), the real broker and the real ingest stage."""

from __future__ import annotations

import pandas as pd
import pytest
from s3_server import S3Store, s3_server, s3_store_env, s3_store_uri  # noqa: F401 (fixtures)

from pipeline.config import IngestSettings, KafkaSettings, RecordSettings, StoreSettings
from pipeline.delta_store import DeltaSeriesStore
from pipeline.kafka_io import KafkaTransport
from pipeline.maintenance import compact
from pipeline.records import Observation
from pipeline.store import OffsetRange, OffsetsTakenError
from pipeline.transport import replay
from pipeline.wiring import ingest_from_settings, open_store

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def _rows(series: str, start: int, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series": series,
            "ts": pd.to_datetime([(start + i) * HOUR_MS for i in range(n)], unit="ms", utc=True),
            "load": [float(start + i) for i in range(n)],
        }
    )


def test_the_table_on_object_storage_appends_travels_in_time_and_compacts(
    s3_store_uri: S3Store,
) -> None:
    uri, options = s3_store_uri
    store = DeltaSeriesStore(uri, options)
    store.append(_rows("a", 0, 10), {"obs:0": OffsetRange(0, 9)})
    store.append(_rows("a", 5, 10), {"obs:0": OffsetRange(10, 19)})  # steps 5..9 again

    with pytest.raises(OffsetsTakenError):
        store.append(_rows("b", 0, 1), {"obs:0": OffsetRange(15, 20)})
    assert store.read("a")["load"].tolist() == [float(i) for i in range(15)]
    assert len(store.rows(version=0)) == 10 and store.ingested_offsets(["obs:0"]) == {"obs:0": 19}

    report = compact(store, retention_hours=0)

    assert report.duplicates_removed == 5 and store.info().rows == 15
    assert DeltaSeriesStore(uri, options).read("a")["load"].tolist() == [
        float(i) for i in range(15)
    ]


def test_ingest_writes_the_stream_to_object_storage(
    rollcast_env: KafkaSettings, s3_store_env: S3Store
) -> None:
    fleet = [
        Observation(f"s{i}", t * HOUR_MS, {"load": float(t)}) for t in range(30) for i in range(5)
    ]
    sink = KafkaTransport(rollcast_env).sink()
    replay(sink, fleet, len(fleet))
    sink.close()

    report = ingest_from_settings(
        KafkaTransport(rollcast_env), StoreSettings(), IngestSettings(), RecordSettings()
    )

    store = open_store(StoreSettings())
    assert store.uri == s3_store_env.uri
    assert report.rows_written == len(fleet) and store.info().rows == len(fleet)
    assert store.series_ids() == [f"s{i}" for i in range(5)]
    assert store.read("s3")["load"].tolist() == [float(t) for t in range(30)]
