"""Serve driven as an operator would: tiny registered models, producing observations, serve
processes started as `rollcast serve`, their metrics, and the topics read back.

Shared by ``benchmarks/faults.py`` and the integration tests (``tests/conftest.py`` puts this
folder on their path); it runs against whatever broker and MLflow store the ``ROLLCAST_*``
variables name.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

import torch

from pipeline import registry, runs
from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings, MlflowSettings, StoreSettings
from pipeline.delta_store import DeltaSeriesStore
from pipeline.kafka_io import SERVED_BY_HEADER, KafkaTransport
from pipeline.model import Forecaster, build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.records import RawRecord
from pipeline.tracking import connect

CHANNELS = ("load",)
LOOKBACK, HORIZON = 8, 4
STEP_MS = 3_600_000
T0_MS = 1_700_000_000_000 - 1_700_000_000_000 % STEP_MS
# How long one poll waits while a topic is read back.
POLL_S = 0.5


def tiny_model(lookback: int = LOOKBACK, seed: int = 0) -> Forecaster:
    torch.manual_seed(seed)
    config = ForecasterConfig(
        channels=CHANNELS, lookback=lookback, horizon=HORIZON, hidden_size=16, segment_len=4
    )
    return build_forecaster(config).eval()


def register(model: Forecaster, promote: bool = True) -> str:
    """Register ``model`` in the test's MLflow store (from ROLLCAST_* variables) as a version."""
    tracking = connect(MlflowSettings(), StoreSettings())
    version = runs.register_checkpoint(tracking, model, "test")
    if promote:
        registry.promote(tracking, version)
    return version


def observation(series: str, step: int, value: float | str = 0.0) -> tuple[bytes, bytes]:
    """Key and value of one observation at ``step`` hours after T0 (a str value is sent raw)."""
    values = f'{{"load": {value}}}' if isinstance(value, str) else json.dumps({"load": value})
    text = f'{{"series": "{series}", "ts": {T0_MS + step * STEP_MS}, "values": {values}}}'
    return series.encode(), text.encode()


def fleet_steps(n_series: int, steps: Iterable[int]) -> list[tuple[bytes, bytes]]:
    """Every series at each step, step by step, with a value that depends on both."""
    return [
        observation(f"s{i}", step, float(step % 24 + i)) for step in steps for i in range(n_series)
    ]


def produce(kafka: KafkaSettings, records: Iterable[tuple[bytes, bytes]]) -> int:
    sink = KafkaTransport(kafka).sink()
    try:
        for key, value in records:
            sink.send_raw(kafka.topic_observations, key, value)
        return sink.flush()
    finally:
        sink.close()


class PacedProducer(threading.Thread):
    """Produces the fleet step after step, ``per_s`` steps a second, until stopped or done."""

    def __init__(self, kafka: KafkaSettings, n_series: int, n_steps: int, per_s: float) -> None:
        super().__init__(daemon=True)
        self.kafka, self.n_series, self.n_steps, self.per_s = kafka, n_series, n_steps, per_s
        self.steps_sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        publisher = KafkaTransport(self.kafka).sink()
        try:
            for step in range(self.n_steps):
                if self._halt.is_set():
                    break
                for key, value in fleet_steps(self.n_series, [step]):
                    publisher.send_raw(self.kafka.topic_observations, key, value)
                publisher.flush()
                self.steps_sent = step + 1
                time.sleep(1 / self.per_s)
        finally:
            publisher.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """`rollcast serve` in its own process, with its log in a file and a metrics port."""

    def __init__(self, log: Path, env: dict[str, str] | None = None, idle_s: float = 5.0) -> None:
        self.log, self.port = log, free_port()
        environment = {**os.environ, "ROLLCAST_METRICS_PORT": str(self.port), **(env or {})}
        command = [sys.executable, "-m", "flows.cli", "serve", "--idle-s", str(idle_s)]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, env=environment, stdout=out, stderr=subprocess.STDOUT
            )

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, as ``docker stop`` sends: the server finishes its batch and leaves."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no last commit."""
        self.process.kill()
        self.process.wait(timeout=30)

    def wait(self, timeout_s: float = 120.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def output(self) -> str:
        return self.log.read_text()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from the Prometheus endpoint, e.g. ``metric("forecasts_out_total")``."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            return float("nan")  # not listening yet
        label_part = re.escape("{" + labels + "}") if labels else ""
        found = re.search(rf"^rollcast_{name}{label_part} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def read_records(
    kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 60.0, quiet_s: float = 3.0
) -> list[RawRecord]:
    """Every record on ``topic``, read from its start by a consumer group of its own.

    Reads until ``expected`` records are in (or ``timeout_s`` passed), and then on until
    ``quiet_s`` pass without one, so that duplicates beyond the expected count are read too.
    """
    source = KafkaTransport(kafka).source(topic, f"read-back-{uuid.uuid4().hex}")
    records: list[RawRecord] = []
    give_up_at, quiet_at = time.monotonic() + timeout_s, 0.0
    try:
        while time.monotonic() < (give_up_at if len(records) < expected else quiet_at):
            polled = source.poll(POLL_S)
            if polled:
                quiet_at = time.monotonic() + quiet_s
            records += polled
    finally:
        source.close()
    return records


def read_forecasts(kafka: KafkaSettings, expected: int) -> list[dict]:
    """Every forecast on the topic (duplicates too), each with the member that served it.

    Either format: what the helpers here read of a forecast (``series``, ``issued_at``,
    ``model``) is in version 2 (the default) and version 1 alike."""
    records = read_records(kafka, kafka.topic_forecasts, expected)
    return [
        {**json.loads(r.value or b"{}"), "served_by": r.header(SERVED_BY_HEADER)} for r in records
    ]


def step_of(iso_ts: str) -> int:
    from pipeline.records import parse_timestamp

    return (parse_timestamp(iso_ts) - T0_MS) // STEP_MS


Step = tuple[str, int]


def every(n_series: int, steps: Iterable[int]) -> set[Step]:
    """Each (series, step) of a fleet ``fleet_steps`` produced."""
    return {(f"s{i}", s) for i in range(n_series) for s in steps}


def stored_steps(table: str) -> set[Step]:
    """Every (series, step) the series table at ``table`` holds (none if there is no table)."""
    rows = DeltaSeriesStore(table).rows()
    steps = (rows.ts_ms - T0_MS) // STEP_MS
    return {(rows.series[c], int(s)) for c, s in zip(rows.codes, steps, strict=True)}


def stored_rows(table: str) -> int:
    """Rows in the table, repeats of a (series, ts) included."""
    return DeltaSeriesStore(table).info().rows


def issued_steps(kafka: KafkaSettings, expected: int) -> set[Step]:
    """Each (series, step) a forecast was issued at, read back from the forecasts topic."""
    return {(f["series"], step_of(f["issued_at"])) for f in read_forecasts(kafka, expected)}


def restart_empty(broker: EmbeddedBroker, kafka: KafkaSettings, down_s: float) -> float:
    """Stop the broker, wait ``down_s``, start it again on its port (memory storage: empty) with
    the topics ``kafka`` names; the monotonic time it was back."""
    broker.stop()
    time.sleep(down_s)
    broker.start()
    back = time.monotonic()
    transport = KafkaTransport(kafka)
    transport.create_topics(transport.topics.all(), partitions=2)
    return back
