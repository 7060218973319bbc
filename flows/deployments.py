"""Deployments of the Rollcast flows, kept apart from the flow code.

``python -m flows.deployments`` serves all three from this process (a local runner).
``python -m flows.deployments --register`` registers them with the ``rollcast`` process work
pool instead, for the workers of docker-compose.
"""

from __future__ import annotations

import argparse

from prefect import Flow, serve

from flows.ingest import ingest_flow
from flows.serve import serve_flow
from flows.train import train_flow

INGEST_INTERVAL_S = 300  # new observations land in the store within five minutes
TRAIN_CRON = "0 3 * * *"  # retrain nightly, after a day of fresh data
WORK_POOL = "rollcast"
SOURCE_DIR = "/app"  # where deploy/Dockerfile puts the code


def serve_locally() -> None:
    serve(
        ingest_flow.to_deployment(name="ingest", interval=INGEST_INTERVAL_S),
        train_flow.to_deployment(name="train", cron=TRAIN_CRON),
        serve_flow.to_deployment(name="serve"),
    )


def register() -> None:
    for entrypoint, name, schedule in (
        ("flows/ingest.py:ingest_flow", "ingest", {"interval": INGEST_INTERVAL_S}),
        ("flows/train.py:train_flow", "train", {"cron": TRAIN_CRON}),
        ("flows/serve.py:serve_flow", "serve", {}),
    ):
        flow = Flow.from_source(source=SOURCE_DIR, entrypoint=entrypoint)
        flow.deploy(name=name, work_pool_name=WORK_POOL, build=False, push=False, **schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register", action="store_true", help="register with the work pool")
    if parser.parse_args().register:
        register()
    else:
        serve_locally()


if __name__ == "__main__":
    main()
