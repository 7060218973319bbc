"""The `rollcast` command as a user runs it: real embedded broker, MLflow store and Prefect API."""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from pipeline.config import KafkaSettings

pytestmark = pytest.mark.integration


def test_demo_prints_a_summary_and_ends_with_it_as_json(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Eight steps need not beat seasonal-naive: the summary, not the gate, is tested here.
    small = {"ROLLCAST_LOOKBACK": "48", "ROLLCAST_HORIZON": "6", "ROLLCAST_PROMOTION_GATE": "false"}
    for name, value in small.items():
        monkeypatch.setenv(name, value)

    code = main(["demo", "--series", "2", "--records", "600", "--max-steps", "8", "--json"])

    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert code == 0
    assert summary["records_in"] == summary["rows_stored"] > 0
    assert summary["series_forecast"] == 2
    assert summary["forecasts_out"] > 0
    assert summary["model_version"] == summary["served_version"] == "1"
    assert summary["mlflow_ui"].startswith(".venv/bin/mlflow ui --backend-store-uri sqlite:///")
    assert any(line.strip().startswith("validation MSE") for line in lines)
    assert summary["source"] == "synthetic fleet: 2 series x 300 steps"
    assert summary["dead_letters"] == sum(summary["dead_letters_by_reason"].values())
    assert any(line.strip().startswith("dead letters") for line in lines)


def test_stages_without_a_broker_say_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ROLLCAST_BOOTSTRAP_SERVERS", raising=False)

    for command in (["ingest"], ["serve"], ["synth", "--records", "10"]):
        assert main(command) == 2
        assert "rollcast broker" in capsys.readouterr().err


def test_a_demo_whose_model_loses_to_seasonal_naive_says_so(
    rollcast_env: KafkaSettings,
    prefect_api: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A learning rate of 1e-7: the model stays as initialized, far from seasonal-naive (with
    # the last-value norm: the seasonal residual model starts as seasonal-naive itself).
    untrained = {
        "ROLLCAST_LOOKBACK": "48",
        "ROLLCAST_HORIZON": "6",
        "ROLLCAST_LEARNING_RATE": "1e-7",
        "ROLLCAST_NORM": "last",
    }
    for name, value in untrained.items():
        monkeypatch.setenv(name, value)

    code = main(["demo", "--series", "2", "--records", "600", "--max-steps", "4"])

    assert code == 2
    assert "does not beat seasonal-naive" in capsys.readouterr().err
