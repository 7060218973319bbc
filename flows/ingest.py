"""Ingest flow: the observations topic into the series store."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_log_level
from flows.retries import transient_only
from pipeline.config import Settings
from pipeline.kafka_io import KafkaTransport
from pipeline.wiring import ingest_from_settings


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=transient_only)
def ingest_observations(settings: Settings, max_records: int | None) -> dict[str, object]:
    transport = KafkaTransport(settings.kafka)
    report = ingest_from_settings(
        transport, settings.store, settings.ingest, settings.records, max_records
    )
    return report.as_dict()


@flow(name="rollcast-ingest")
def ingest_flow(
    max_records: int | None = None, settings: Settings | None = None
) -> dict[str, object]:
    """Consume until idle (or ``max_records``), store, then commit offsets.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    """
    require_log_level()
    return ingest_observations(settings or Settings(), max_records)
