"""Serve flow: the rolling forecast loop as a Prefect run.

The `rollcast serve` process runs the same loop without Prefect.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.config import (
    KafkaSettings,
    MlflowSettings,
    RecordSettings,
    ServeSettings,
    StoreSettings,
)
from pipeline.kafka_io import KafkaTransport
from pipeline.wiring import serve_from_settings


@task(cache_policy=NO_CACHE)
def serve_champion(
    kafka: KafkaSettings,
    store: StoreSettings,
    mlflow_settings: MlflowSettings,
    serve: ServeSettings,
    records: RecordSettings,
    max_records: int | None,
) -> dict[str, object]:
    transport = KafkaTransport(kafka)
    stats, champion = serve_from_settings(
        transport, store, mlflow_settings, serve, records, max_records
    )
    return {**stats.as_dict(), "model_version": champion.version}


@flow(name="rollcast-serve")
def serve_flow(
    max_records: int | None = None,
    idle_s: float | None = None,
    kafka: KafkaSettings | None = None,
    store: StoreSettings | None = None,
    mlflow_settings: MlflowSettings | None = None,
    serve: ServeSettings | None = None,
    records: RecordSettings | None = None,
) -> dict[str, object]:
    """Forecast every new step of every series with the champion until stopped.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    """
    serve = serve or ServeSettings()
    if idle_s is not None:
        serve = serve.model_copy(update={"serve_idle_s": idle_s})
    return serve_champion(
        kafka or KafkaSettings(),
        store or StoreSettings(),
        mlflow_settings or MlflowSettings(),
        serve,
        records or RecordSettings(),
        max_records,
    )
