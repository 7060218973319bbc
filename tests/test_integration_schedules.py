"""Deployments run by themselves: a real Prefect server schedules them, a runner runs them.

The server is ``prefect server start`` (sqlite, every service on), the runner
``python -m flows.deployments`` exactly as the README says, with a short ingest interval.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_harness import fleet_steps, free_port, produce

from pipeline.config import KafkaSettings, StoreSettings
from pipeline.store import SeriesStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
N_SERIES, N_STEPS = 3, 30


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the test harness's Prefect settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **extra}


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = _clean_env(
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
        _wait_for(lambda: _healthy(api), 120, "the Prefect server to answer")
        yield api
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "bulk DML" not in (tmp_path / "server.log").read_text(), "the scheduler failed"


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(1)
    raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")


def _completed_scheduled_run(api: str, deployment_id: str) -> dict[str, Any] | None:
    completed = {"type": {"any_": ["COMPLETED"]}}
    body = {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": completed},
        "limit": 10,
    }
    runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()
    scheduled = [run for run in runs if run["auto_scheduled"]]  # not started by hand
    return scheduled[0] if scheduled else None


def _deployment_id(api: str, flow: str, name: str) -> str | None:
    response = httpx.get(f"{api}/deployments/name/{flow}/{name}", timeout=10)
    return response.json()["id"] if response.status_code == 200 else None


def _run_logs(api: str, flow_run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return [entry["message"] for entry in httpx.post(f"{api}/logs/filter", json=body).json()]


def test_served_ingest_deployment_runs_on_its_schedule(
    rollcast_env: KafkaSettings, prefect_server: str, tmp_path: Path
) -> None:
    produce(rollcast_env, fleet_steps(N_SERIES, range(N_STEPS)))
    env = _clean_env(
        PREFECT_API_URL=prefect_server,
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        ROLLCAST_INGEST_INTERVAL_S="10",
    )
    with (tmp_path / "runner.log").open("w") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "flows.deployments"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deployment = _wait_for(
            lambda: _deployment_id(prefect_server, "rollcast-ingest", "ingest"),
            120,
            "the ingest deployment",
        )
        run = _wait_for(
            lambda: _completed_scheduled_run(prefect_server, deployment),
            240,
            "a scheduled ingest run to complete",
        )
    finally:
        runner.terminate()
        runner.wait(timeout=60)

    stored = SeriesStore(StoreSettings().store_dir).read_all()
    assert sorted(stored) == [f"s{i}" for i in range(N_SERIES)]
    assert all(len(frame) == N_STEPS for frame in stored.values())
    logs = _run_logs(prefect_server, run["id"])
    assert any("rows stored" in line for line in logs), "Rollcast's log lines are not in the run"


def test_deployments_refuse_to_start_without_a_broker(tmp_path: Path) -> None:
    env = _clean_env(PREFECT_API_URL="http://127.0.0.1:9/api")
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
