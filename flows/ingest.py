"""Ingest flow: the observations topic into the Parquet series store."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import IngestSettings, KafkaSettings, StoreSettings
from pipeline.ingest import ingest_from_settings


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def ingest_observations(
    kafka: KafkaSettings, store: StoreSettings, ingest: IngestSettings, max_records: int | None
) -> dict[str, object]:
    return ingest_from_settings(kafka, store, ingest, max_records).as_dict()


@flow(name="rollcast-ingest")
def ingest_flow(max_records: int | None = None) -> dict[str, object]:
    """Consume until idle (or ``max_records``), store, then commit offsets."""
    return ingest_observations(KafkaSettings(), StoreSettings(), IngestSettings(), max_records)
