"""Flows retry outages, not configuration errors: a missing setting fails once, at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.states import Failed

from flows.maintenance import compact_flow
from flows.retries import transient_only
from pipeline import ConfigurationError
from pipeline.config import IngestSettings
from pipeline.kafka_io import BrokerNotConfiguredError, BrokerUnavailableError


def test_a_configuration_error_is_not_retried() -> None:
    assert not transient_only(None, None, Failed(data=BrokerNotConfiguredError("no broker")))


def test_an_invalid_setting_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLCAST_INGEST_IDLE_S", "soon")
    with pytest.raises(Exception) as invalid:
        IngestSettings()
    assert not transient_only(None, None, Failed(data=invalid.value))


def test_an_unreachable_broker_is_retried() -> None:
    assert transient_only(None, None, Failed(data=BrokerUnavailableError("no answer")))


@pytest.mark.integration
def test_ingest_without_a_broker_fails_on_its_first_try(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest_flow

    monkeypatch.delenv("ROLLCAST_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("ROLLCAST_DATA_DIR", str(tmp_path))
    state = ingest_flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(BrokerNotConfiguredError, match="ROLLCAST_BOOTSTRAP_SERVERS"):
        state.result()
    only_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=only_this_run)
    assert [run.run_count for run in task_runs] == [1]


def test_a_wrong_log_level_stops_a_command_with_one_line() -> None:
    env = {**os.environ, "ROLLCAST_LOG_LEVEL": "LOUD"}
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "store", "info"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "rollcast: ROLLCAST_LOG_LEVEL='LOUD' is not a log level: use DEBUG, INFO, WARNING or ERROR"
    )


def test_a_wrong_log_level_stops_a_flow_before_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLCAST_LOG_LEVEL", "LOUD")

    with pytest.raises(ConfigurationError, match="ROLLCAST_LOG_LEVEL='LOUD'"):
        compact_flow.fn()
