"""Ingest flow: the observations topic into the Parquet series store."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.retries import transient_only
from pipeline.config import IngestSettings, KafkaSettings, RecordSettings, StoreSettings
from pipeline.kafka_io import KafkaTransport
from pipeline.wiring import ingest_from_settings


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=transient_only)
def ingest_observations(
    kafka: KafkaSettings,
    store: StoreSettings,
    ingest: IngestSettings,
    records: RecordSettings,
    max_records: int | None,
) -> dict[str, object]:
    transport = KafkaTransport(kafka)
    return ingest_from_settings(transport, store, ingest, records, max_records).as_dict()


@flow(name="rollcast-ingest")
def ingest_flow(
    max_records: int | None = None,
    kafka: KafkaSettings | None = None,
    store: StoreSettings | None = None,
    ingest: IngestSettings | None = None,
    records: RecordSettings | None = None,
) -> dict[str, object]:
    """Consume until idle (or ``max_records``), store, then commit offsets.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    """
    return ingest_observations(
        kafka or KafkaSettings(),
        store or StoreSettings(),
        ingest or IngestSettings(),
        records or RecordSettings(),
        max_records,
    )
