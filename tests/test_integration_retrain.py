"""Retraining driven by forecast error, end to end: a stream whose regime changes mid-way.

Serve (its own process) forecasts with a champion trained on regime A and reports its online
MSE to MLflow; regime B arrives; the drift flow sees the ratio to the validation MSE pass
``ROLLCAST_DRIFT_RATIO`` and runs the train flow; serve swaps the new champion in, and its
online error on more of regime B is back near its validation error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from serve_harness import STEP_MS, T0_MS, ServeProcess, produce, wait_for

from flows.ingest import ingest_flow
from flows.retrain import drift_flow
from flows.train import train_flow
from pipeline import monitoring
from pipeline.config import KafkaSettings, MlflowSettings
from pipeline.tracking import connect_reader

pytestmark = pytest.mark.integration

N_SERIES = 3
A_STEPS, B_STEPS, MORE_B_STEPS = 360, 240, 120
DRIFT_RATIO = 2.0
ENV = {
    "ROLLCAST_LOOKBACK": "24",
    "ROLLCAST_HORIZON": "6",
    "ROLLCAST_HIDDEN_SIZE": "32",
    "ROLLCAST_SEGMENT_LEN": "12",
    "ROLLCAST_PROMOTION_GATE": "false",  # the gate has its own test; the champion check stays
    "ROLLCAST_DRIFT_RATIO": str(DRIFT_RATIO),
    "ROLLCAST_DRIFT_MIN_SCORED": "50",
}


def regime(steps: range, amplitude: float, period: int, level: float) -> list[tuple[bytes, bytes]]:
    """Every series at each step: a daily cycle plus noise (seeded by the first step)."""
    noise = np.random.default_rng(steps.start).normal(0, 0.1, (len(steps), N_SERIES))
    records = []
    for row, step in enumerate(steps):
        for i in range(N_SERIES):
            value = level + amplitude * math.sin(2 * math.pi * step / period) + noise[row, i]
            body = {"series": f"s{i}", "ts": T0_MS + step * STEP_MS, "values": {"load": value}}
            records.append((f"s{i}".encode(), json.dumps(body).encode()))
    return records


def online(version: str) -> tuple[float, float, int] | None:
    return monitoring.online_error(connect_reader(MlflowSettings()), version)


def test_a_regime_change_triggers_a_retrain_that_serve_swaps_in(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    sent = produce(rollcast_env, regime(range(A_STEPS), amplitude=1.0, period=24, level=0.0))
    ingest_flow(max_records=sent)
    first = train_flow(max_steps=100)
    assert first["promoted"] and first["version"] == "1"

    reports = {
        "ROLLCAST_ONLINE_REPORT_S": "1",
        "ROLLCAST_CHAMPION_POLL_S": "1",
        # One step of each series per batch, as a live stream comes: in a catch-up batch only
        # the newest forecast of a series is scored (its actuals are all still to come).
        "ROLLCAST_MAX_POLL_RECORDS": str(N_SERIES),
    }
    with ServeProcess(tmp_path / "serve.log", env=reports, idle_s=600) as serve:
        wait_for(lambda: serve.metric("records_in_total") == sent, "serve to read regime A")
        b = regime(range(A_STEPS, A_STEPS + B_STEPS), amplitude=4.0, period=12, level=3.0)
        sent_b = produce(rollcast_env, b)
        wait_for(lambda: serve.metric("records_in_total") == sent + sent_b, "regime B read")
        wait_for(
            lambda: (o := online("1")) is not None and o[1] / o[0] > DRIFT_RATIO,
            "serve to report the drift",
            timeout_s=180,
        )

        ingest_flow(max_records=sent_b)
        decided = drift_flow(train_max_steps=100)

        assert decided["retrain"] is True and decided["ratio"] > DRIFT_RATIO, decided
        trained = decided["trained"]
        assert trained["promoted"] and trained["version"] == "2"
        wait_for(lambda: serve.metric("model_swaps_total") == 1, "serve to swap in version 2")
        more = range(A_STEPS + B_STEPS, A_STEPS + B_STEPS + MORE_B_STEPS)
        sent_more = produce(rollcast_env, regime(more, amplitude=4.0, period=12, level=3.0))
        total = sent + sent_b + sent_more
        wait_for(lambda: serve.metric("records_in_total") == total, "more of regime B read")
        wait_for(lambda: online("2") is not None, "serve to report version 2", timeout_s=180)

    val_mse, online_mse, values = online("2")  # type: ignore[misc]
    assert values > 0 and online_mse / val_mse < DRIFT_RATIO, "online error did not recover"
    assert online_mse / val_mse < decided["ratio"]
    check = drift_flow(train_max_steps=100)
    assert check["version"] == "2" and check["retrain"] is False
