"""Serve flow: the rolling forecast loop as a Prefect run.

The `rollcast serve` process runs the same loop without Prefect.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_log_level
from pipeline.config import Settings
from pipeline.kafka_io import KafkaTransport
from pipeline.wiring import serve_from_settings


@task(cache_policy=NO_CACHE)
def serve_champion(settings: Settings, max_records: int | None) -> dict[str, object]:
    transport = KafkaTransport(settings.kafka)
    stats, champion = serve_from_settings(
        transport, settings.store, settings.mlflow, settings.serve, settings.records, max_records
    )
    return {**stats.as_dict(), "model_version": champion.version}


@flow(name="rollcast-serve")
def serve_flow(
    max_records: int | None = None, settings: Settings | None = None
) -> dict[str, object]:
    """Forecast every new step of every series with the champion until stopped: after
    ``max_records``, once ``settings.serve.serve_idle_s`` pass without a record, or on SIGTERM.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    """
    require_log_level()
    return serve_champion(settings or Settings(), max_records)
