"""Helpers for tests that run Rollcast's deployments against a real Prefect server over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the test harness's Prefect settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, **extra}


def start_runner(log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m flows.deployments``, as the README says to run it."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flows.deployments"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_runner(runner: subprocess.Popen[bytes]) -> None:
    runner.terminate()
    runner.wait(timeout=60)


def eventually(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``check()``'s first truthy answer, asked every second until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(1)
    raise AssertionError(f"gave up waiting for {what} after {timeout_s:.0f} s")


def healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def deployment_id(api: str, flow: str, name: str) -> str | None:
    response = httpx.get(f"{api}/deployments/name/{flow}/{name}", timeout=10)
    return response.json()["id"] if response.status_code == 200 else None


def completed_runs(api: str, deployment: str) -> list[dict[str, Any]]:
    completed = {"type": {"any_": ["COMPLETED"]}}
    body = {
        "flow_runs": {"deployment_id": {"any_": [deployment]}, "state": completed},
        "limit": 10,
    }
    return list(httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json())


def run_deployment(api: str, deployment: str, parameters: dict[str, Any], timeout_s: float) -> str:
    """Start a run of ``deployment`` by hand, as the UI's "Run" does; wait for it to complete."""
    body = {"parameters": parameters}
    created = httpx.post(f"{api}/deployments/{deployment}/create_flow_run", json=body, timeout=10)
    run_id = str(created.json()["id"])

    def finished() -> str | None:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state_type"]
        return state if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    state = eventually(finished, timeout_s, f"flow run {run_id}")
    assert state == "COMPLETED", f"flow run {run_id} ended {state}"
    return run_id


def run_logs(api: str, flow_run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return [entry["message"] for entry in httpx.post(f"{api}/logs/filter", json=body).json()]
