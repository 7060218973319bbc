"""The production stack, tested: MLflow and Prefect servers on PostgreSQL (``rollcast stack``),
the deployments registered by ``python -m flows.deployments``, and ingest → train → serve run
through them on the embedded broker. Skipped where no PostgreSQL answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployment_harness import (
    clean_env,
    deployment_id,
    eventually,
    run_deployment,
    start_runner,
    stop_runner,
)
from mlflow.tracking import MlflowClient
from serve_harness import fleet_steps, free_port, produce, read_forecasts

from flows.stack import Stack, postgres_reachable
from pipeline.config import KafkaSettings, MlflowSettings, StackSettings

pytestmark = pytest.mark.integration

N_SERIES, N_STEPS = 3, 240
TINY_MODEL = {
    "ROLLCAST_LOOKBACK": "24",
    "ROLLCAST_HORIZON": "6",
    "ROLLCAST_HIDDEN_SIZE": "16",
    "ROLLCAST_SEGMENT_LEN": "12",
    "ROLLCAST_PROMOTION_GATE": "false",  # a few steps of a tiny model: the gate has its own test
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    run = uuid.uuid4().hex[:8]
    settings = StackSettings(
        stack_mlflow_db=f"rollcast_test_mlflow_{run}",
        stack_prefect_db=f"rollcast_test_prefect_{run}",
        stack_mlflow_port=free_port(),
        stack_prefect_port=free_port(),
    )
    if not postgres_reachable(settings):
        pytest.skip("no PostgreSQL answers at ROLLCAST_POSTGRES_URL (default 127.0.0.1:5432)")
    try:
        with Stack(settings, tmp_path / "stack") as running:
            yield running
    finally:
        _drop_databases(settings)


def _drop_databases(settings: StackSettings) -> None:
    import psycopg
    from psycopg import sql

    url = settings.postgres_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as db:
        for name in (settings.stack_mlflow_db, settings.stack_prefect_db):
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            db.execute(drop.format(sql.Identifier(name)))


def test_ingest_train_and_serve_run_as_deployments_on_postgres(
    rollcast_env: KafkaSettings, stack: Stack, tmp_path: Path
) -> None:
    produced = produce(rollcast_env, fleet_steps(N_SERIES, range(N_STEPS)))
    api = stack.prefect_api
    env = clean_env(**stack.env(), **TINY_MODEL, PREFECT_RUNNER_POLL_FREQUENCY="2")
    runner = start_runner(tmp_path / "runner.log", env)
    try:
        deployments = {
            name: eventually(
                lambda name=name: deployment_id(api, f"rollcast-{name}", name), 180, name
            )
            for name in ("ingest", "train", "serve")
        }
        run_deployment(api, deployments["ingest"], {"max_records": produced}, 300)
        run_deployment(api, deployments["train"], {"max_steps": 20}, 600)
        run_deployment(api, deployments["serve"], {"max_records": produced}, 300)
    finally:
        stop_runner(runner)

    client = MlflowClient(stack.mlflow_uri)
    name = MlflowSettings().model_name
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == "1"
    run = client.get_run(champion.run_id)
    assert {"val_mse", "val_seasonal_naive_mse"} <= run.data.metrics.keys()
    lookback = int(run.data.params["model.lookback"])
    expected = N_SERIES * (N_STEPS - lookback + 1)  # one per step once a window is whole
    forecasts = read_forecasts(rollcast_env, expected)
    assert len(forecasts) == expected
    assert {f["model"]["version"] for f in forecasts} == {"1"}
    assert {f["series"] for f in forecasts} == {f"s{i}" for i in range(N_SERIES)}
