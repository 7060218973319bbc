"""A broker restarted empty, or gone, under the producer and under running serve and ingest.

These tests stop and start the embedded broker, so they run on one of their own (the module's
``broker`` fixture overrides the shared one): memory storage, so a restarted broker is empty,
as a broker replaced by a new one is. It is stopped and started from the test's main thread:
the broker dies with the thread that started it (pipeline/children.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_harness import (
    LOOKBACK,
    ServeProcess,
    every,
    fleet_steps,
    issued_steps,
    produce,
    register,
    restart_empty,
    stored_rows,
    stored_steps,
    tiny_model,
    wait_for,
)
from topics import read_topic

from pipeline import shutdown
from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings, StoreSettings
from pipeline.kafka_io import KafkaTransport

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
# A loaded machine starts a serve process (torch, MLflow, the model) in tens of seconds.
READY_S = 180.0
# `docker stop` sends SIGKILL this long after SIGTERM.
GRACE_S = 10.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """This module's own broker, which its tests stop and start again on the same port."""
    log = tmp_path_factory.mktemp("restarted-broker") / "tansu.log"
    running = EmbeddedBroker(log_path=log).start()
    try:
        yield running
    finally:
        running.stop()


# -- the producer ------------------------------------------------------------------------------


def test_a_producer_the_restarted_broker_does_not_know_is_rebuilt_and_sends_again(
    rollcast_env: KafkaSettings, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    sink = KafkaTransport(rollcast_env).sink()
    topic = rollcast_env.topic_forecasts
    try:
        for i in range(20):
            sink.send_raw(topic, f"k{i}".encode(), b"before")
        assert sink.flush() == 20
        restart_empty(broker, rollcast_env, down_s=1.0)
        for i in range(20):
            sink.send_raw(topic, f"k{i}".encode(), f"after-{i}".encode())
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="pipeline.kafka_io"):
            acknowledged = sink.flush()
        took_s = time.monotonic() - started
    finally:
        sink.close()

    values = {r.value for r in read_topic(rollcast_env, topic, expected=20, settle_s=1)}
    assert acknowledged == 20
    assert values == {f"after-{i}".encode() for i in range(20)}  # the broker came back empty
    assert "rebuilt" in caplog.text, caplog.text
    assert took_s < 30, f"the flush took {took_s:.0f} s"


def test_a_stop_request_ends_a_flush_during_an_outage_at_once(
    rollcast_env: KafkaSettings, broker: EmbeddedBroker
) -> None:
    sink = KafkaTransport(rollcast_env).sink()
    topic = rollcast_env.topic_forecasts
    sink.send_raw(topic, b"k", b"before")
    sink.flush()
    outcome: list[BaseException | int] = []

    def flush() -> None:
        try:
            outcome.append(sink.flush())
        except shutdown.StopRequestedError as err:
            outcome.append(err)

    broker.stop()
    try:
        for i in range(50):
            sink.send_raw(topic, b"k", str(i).encode())
        with shutdown.stop_on_sigterm():
            flushing = threading.Thread(target=flush)
            flushing.start()
            time.sleep(3.0)  # well into the outage: the flush is waiting for the broker
            asked = time.monotonic()
            shutdown.request("test")
            flushing.join(timeout=30)
            stopped_s = time.monotonic() - asked
            sink.close()
            closed_s = time.monotonic() - asked
    finally:
        broker.start()

    assert isinstance(outcome[0], shutdown.StopRequestedError), outcome
    assert stopped_s < 2.0 and closed_s < 5.0, (stopped_s, closed_s)


# -- serve and ingest as processes ----------------------------------------------------------


class IngestProcess:
    """One ingest process (tests/ingest_process.py: the stage without Prefect), log in a file."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log = log
        command = [sys.executable, str(ROOT / "tests" / "ingest_process.py")]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()


def sigterm_stop_s(process: subprocess.Popen[bytes]) -> tuple[float, int]:
    """SIGTERM, as `docker stop` sends; the seconds until the process was gone, and its code."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return time.monotonic() - started, code


def test_serve_and_ingest_go_on_across_a_broker_restarted_empty(
    rollcast_env: KafkaSettings, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    register(tiny_model())
    table = StoreSettings().table_uri
    n_series, before, after = 4, range(40), range(40, 70)  # fewer after: offsets restart below
    produce(rollcast_env, fleet_steps(n_series, before))
    idle = {"ROLLCAST_INGEST_IDLE_S": "3600"}
    with ServeProcess(tmp_path / "serve.log", idle_s=3600) as serve:
        ingest = IngestProcess(tmp_path / "ingest.log", idle)
        try:
            warm = n_series * (len(before) - LOOKBACK + 1)
            wait_for(lambda: serve.metric("forecasts_out_total") >= warm, "forecasts before")
            wait_for(lambda: every(n_series, before) <= stored_steps(table), "rows before")
            restart_empty(broker, rollcast_env, down_s=1.0)
            produce(rollcast_env, fleet_steps(n_series, after))
            back = time.monotonic()
            goal = every(n_series, after)
            wait_for(lambda: serve.metric("forecasts_out_total") >= warm + len(goal), "serve")
            forecast_s = time.monotonic() - back
            wait_for(lambda: goal <= stored_steps(table), "the rows after the restart")
        finally:
            serve_stop = sigterm_stop_s(serve.process)
            ingest_stop = sigterm_stop_s(ingest.process)

    assert goal <= issued_steps(rollcast_env, len(goal)), "a record after the restart unserved"
    assert goal <= stored_steps(table)
    assert forecast_s < 60, f"forecasts resumed {forecast_s:.0f} s after the broker's return"
    assert "restarted its offsets" in ingest.output(), ingest.output()[-3000:]
    assert serve_stop[1] == 0 and serve_stop[0] < GRACE_S, (serve_stop, serve.output()[-3000:])
    assert ingest_stop[1] == 0 and ingest_stop[0] < GRACE_S, (ingest_stop, ingest.output()[-3000:])


def test_sigterm_during_a_broker_outage_stops_serve_and_ingest_in_the_grace_period(
    rollcast_env: KafkaSettings, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    register(tiny_model())
    table = StoreSettings().table_uri
    n_series, steps = 4, range(20)
    produce(rollcast_env, fleet_steps(n_series, steps))
    with ServeProcess(tmp_path / "serve.log", idle_s=3600) as serve:
        ingest = IngestProcess(tmp_path / "ingest.log", {"ROLLCAST_INGEST_IDLE_S": "3600"})
        warm = n_series * (len(steps) - LOOKBACK + 1)
        try:
            wait_for(lambda: serve.metric("forecasts_out_total") >= warm, "forecasts")
            wait_for(lambda: every(n_series, steps) <= stored_steps(table), "rows")
            broker.stop()
            time.sleep(5.0)  # into the outage: both are polling a broker that is gone
            serve_stop = sigterm_stop_s(serve.process)
            ingest_stop = sigterm_stop_s(ingest.process)
        finally:
            broker.start()

    assert serve_stop[1] == 0 and serve_stop[0] < GRACE_S, (serve_stop, serve.output()[-3000:])
    assert ingest_stop[1] == 0 and ingest_stop[0] < GRACE_S, (ingest_stop, ingest.output()[-3000:])


def test_sigterm_during_a_backlog_stops_serve_and_ingest_in_the_grace_period(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    register(tiny_model())
    table = StoreSettings().table_uri
    n_series, steps = 20_000, range(6)  # a fleet's backlog: 120,000 records, flushes of 50,000
    produce(rollcast_env, fleet_steps(n_series, steps))
    with ServeProcess(tmp_path / "serve.log", idle_s=3600) as serve:
        ingest = IngestProcess(tmp_path / "ingest.log", {"ROLLCAST_INGEST_IDLE_S": "3600"})
        try:
            wait_for(lambda: serve.metric("records_in_total") > 0, "serve to start reading")
            wait_for(lambda: stored_rows(table) > 0, "ingest to store its first flush")
        finally:
            serve_stop = sigterm_stop_s(serve.process)
            ingest_stop = sigterm_stop_s(ingest.process)

    assert serve.metric("records_in_total") != n_series * len(steps)  # stopped mid-backlog
    assert serve_stop[1] == 0 and serve_stop[0] < GRACE_S, (serve_stop, serve.output()[-3000:])
    assert ingest_stop[1] == 0 and ingest_stop[0] < GRACE_S, (ingest_stop, ingest.output()[-3000:])
    assert stored_rows(table) < n_series * len(steps), "it was not stopped mid-backlog"
