"""The series table under several writers and crashes, on the real broker and real files:
three ingest processes at once, and SIGKILLs between the table's commit and Kafka's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from topics import read_topic

from pipeline.config import KafkaSettings, StoreSettings
from pipeline.kafka_io import KafkaTransport
from pipeline.records import Observation
from pipeline.transport import replay
from pipeline.wiring import open_store

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
PROCESS = Path(__file__).with_name("ingest_process.py")
SERIES = 40


def _produce(kafka: KafkaSettings, steps: int) -> list[Observation]:
    """Round-robin: every series' step t, then every series' step t + 1."""
    fleet = [
        Observation(f"s{i}", t * HOUR_MS, {"load": float(i * 1000 + t)})
        for t in range(steps)
        for i in range(SERIES)
    ]
    sink = KafkaTransport(kafka).sink()
    try:
        replay(sink, fleet, len(fleet))
    finally:
        sink.close()
    return fleet


def _start(group: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ROLLCAST_INGEST_GROUP": group,
        "ROLLCAST_INGEST_FLUSH_RECORDS": "300",  # many small commits: many races
        "ROLLCAST_INGEST_IDLE_S": "8",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(PROCESS)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait(process: subprocess.Popen[bytes], log: Path) -> None:
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]


def _assert_stored_once(fleet: list[Observation]) -> None:
    store = open_store(StoreSettings())
    rows = store.rows()
    assert len(rows) == len(fleet)  # nothing lost
    assert store.info().rows == len(fleet)  # and nothing stored twice: exactly once
    expected = {(o.series, o.ts_ms): o.values["load"] for o in fleet}
    names = np.array(rows.series)[rows.codes]
    keys = zip(names.tolist(), rows.ts_ms.tolist(), strict=True)
    stored = dict(zip(keys, rows.values[:, 0].tolist(), strict=True))
    assert stored == expected


def test_three_concurrent_ingest_processes_store_every_record_once(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    fleet = _produce(rollcast_env, steps=100)
    # Separate consumer groups: each process reads every record, as a manual run beside the
    # scheduled one would; the table's own offsets decide who stores what.
    logs = [tmp_path / f"ingest-{n}.log" for n in range(3)]
    processes = [_start(f"ingest-{n}-{os.getpid()}", log) for n, log in enumerate(logs)]
    for process, log in zip(processes, logs, strict=True):
        _wait(process, log)

    _assert_stored_once(fleet)
    dead = read_topic(rollcast_env, rollcast_env.topic_deadletter, settle_s=2.0, timeout_s=5.0)
    assert dead == []


def test_sigkills_between_the_table_commit_and_the_kafka_commit_lose_and_repeat_nothing(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    fleet = _produce(rollcast_env, steps=600)  # polls of 2,000 records: a dozen commits
    log, group = tmp_path / "ingest.log", f"ingest-killed-{os.getpid()}"
    store = open_store(StoreSettings())
    for _ in range(3):
        version = store.info().version
        process = _start(group, log)
        _wait_for_commits(store, process, (-1 if version is None else version) + 2)
        process.send_signal(signal.SIGKILL)  # mid-flush: after, before or during a commit
        process.wait(timeout=60)
        assert len(store.rows()) > 0  # the table is readable after every kill
    _wait(_start(group, log), log)

    _assert_stored_once(fleet)


def _wait_for_commits(store: object, process: subprocess.Popen[bytes], version: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        info = store.info()  # type: ignore[attr-defined]
        if info.version is not None and info.version >= version:
            return
        time.sleep(0.05)
    raise AssertionError(f"the table never reached version {version}")
