"""Deployments run by themselves: a real Prefect server schedules them, a runner runs them.

The server is ``prefect server start`` (sqlite, every service on), the runner
``python -m flows.deployments`` exactly as the README says, with a short ingest interval.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployment_harness import (
    ROOT,
    clean_env,
    completed_runs,
    deployment_id,
    eventually,
    healthy,
    run_logs,
    start_runner,
    stop_runner,
)
from serve_harness import fleet_steps, free_port, produce

from pipeline.config import KafkaSettings, StoreSettings
from pipeline.wiring import open_store

pytestmark = pytest.mark.integration

N_SERIES, N_STEPS = 3, 30


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = clean_env(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        eventually(lambda: healthy(api), 180, "the Prefect server to answer")
        yield api
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "bulk DML" not in (tmp_path / "server.log").read_text(), "the scheduler failed"


def test_served_ingest_deployment_runs_on_its_schedule(
    rollcast_env: KafkaSettings, prefect_server: str, tmp_path: Path
) -> None:
    produce(rollcast_env, fleet_steps(N_SERIES, range(N_STEPS)))
    env = clean_env(
        PREFECT_API_URL=prefect_server,
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        ROLLCAST_INGEST_INTERVAL_S="10",
    )
    runner = start_runner(tmp_path / "runner.log", env)
    try:
        deployment = eventually(
            lambda: deployment_id(prefect_server, "rollcast-ingest", "ingest"),
            180,
            "the ingest deployment",
        )
        scheduled = eventually(
            lambda: [r for r in completed_runs(prefect_server, deployment) if r["auto_scheduled"]],
            240,
            "a scheduled ingest run to complete",
        )
    finally:
        stop_runner(runner)

    store = open_store(StoreSettings())
    stored = {name: store.read(name) for name in store.series_ids()}
    assert sorted(stored) == [f"s{i}" for i in range(N_SERIES)]
    assert all(len(frame) == N_STEPS for frame in stored.values())
    logs = run_logs(prefect_server, scheduled[0]["id"])
    assert any("rows stored" in line for line in logs), "Rollcast's log lines are not in the run"


def test_deployments_refuse_to_start_without_a_broker() -> None:
    env = clean_env(PREFECT_API_URL="http://127.0.0.1:9/api")
    env.pop("ROLLCAST_BOOTSTRAP_SERVERS", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.deployments"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "ROLLCAST_BOOTSTRAP_SERVERS" in done.stderr
