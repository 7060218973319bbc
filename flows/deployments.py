"""Deployments of the Rollcast flows, kept apart from the flow code.

``python -m flows.deployments`` serves all five (ingest, train, serve, the drift check and the
series table's compaction) from this process (a local runner).
``python -m flows.deployments --register`` registers them with the ``rollcast`` process work
pool instead, for the workers of docker-compose. Schedules come from ``ScheduleSettings``
(``ROLLCAST_INGEST_INTERVAL_S``, ``ROLLCAST_TRAIN_CRON``), compaction's from
:data:`COMPACT_CRON`. The runs read every other setting
from the ``ROLLCAST_*`` variables of the process that runs them, so a missing broker address
is refused here, before anything is served.
"""

from __future__ import annotations

import argparse
import sys

from prefect import Flow, serve

from flows.ingest import ingest_flow
from flows.maintenance import compact_flow
from flows.retrain import drift_flow
from flows.serve import serve_flow
from flows.train import train_flow
from pipeline import ConfigurationError
from pipeline.config import KafkaSettings, ScheduleSettings
from pipeline.kafka_io import bootstrap_servers

WORK_POOL = "rollcast"
SOURCE_DIR = "/app"  # where deploy/Dockerfile puts the code
# Compact the series table daily, after the nightly training began (cron, UTC): a run still
# reading keeps its version, whose files vacuum leaves for ROLLCAST_STORE_RETENTION_HOURS.
COMPACT_CRON = "30 3 * * *"


def serve_locally(schedules: ScheduleSettings) -> None:
    serve(
        # One run at a time: a run that outlasts its interval delays the next, not overlaps it.
        ingest_flow.to_deployment(
            name="ingest", interval=schedules.ingest_interval_s, concurrency_limit=1
        ),
        train_flow.to_deployment(name="train", cron=schedules.train_cron, concurrency_limit=1),
        drift_flow.to_deployment(
            name="drift", interval=schedules.drift_check_interval_s, concurrency_limit=1
        ),
        serve_flow.to_deployment(name="serve"),
        compact_flow.to_deployment(name="compact", cron=COMPACT_CRON, concurrency_limit=1),
    )


def register(schedules: ScheduleSettings) -> None:
    for entrypoint, name, schedule in (
        ("flows/ingest.py:ingest_flow", "ingest", {"interval": schedules.ingest_interval_s}),
        ("flows/train.py:train_flow", "train", {"cron": schedules.train_cron}),
        ("flows/retrain.py:drift_flow", "drift", {"interval": schedules.drift_check_interval_s}),
        ("flows/serve.py:serve_flow", "serve", {}),
        ("flows/maintenance.py:compact_flow", "compact", {"cron": COMPACT_CRON}),
    ):
        flow = Flow.from_source(source=SOURCE_DIR, entrypoint=entrypoint)
        flow.deploy(
            name=name,
            work_pool_name=WORK_POOL,
            build=False,
            push=False,
            concurrency_limit=1,
            **schedule,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register", action="store_true", help="register with the work pool")
    registering = parser.parse_args().register
    try:
        schedules = ScheduleSettings()
        if not registering:  # workers bring their own environment
            bootstrap_servers(KafkaSettings())
    except ConfigurationError as error:
        sys.exit(f"flows.deployments: {error}")
    if registering:
        register(schedules)
    else:
        serve_locally(schedules)


if __name__ == "__main__":
    main()
