"""Operations under real faults (issue 20): the parts of ``benchmarks/faults.py`` that restart the
broker, jump a series' clock, run two ingests on one table and fill the disk.

Each part runs `rollcast serve` and `rollcast ingest` as processes, as an operator would, with
the ``ROLLCAST_*`` variables ``faults.fresh_env`` set for it, and counts what a user would miss:
forecasts never issued, rows never stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from serve_harness import (
    LOOKBACK,
    ServeProcess,
    every,
    fleet_steps,
    issued_steps,
    observation,
    produce,
    read_records,
    restart_empty,
    stored_rows,
    stored_steps,
    wait_for,
)

from pipeline.config import KafkaSettings


class IngestProcess:
    """`rollcast ingest` in its own process, with its log in a file."""

    def __init__(self, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        command = [sys.executable, "-m", "flows.cli", "ingest"]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )

    def wait(self, timeout_s: float = 600.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop_s(self) -> float:
        """SIGTERM, and the seconds until the process is gone."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)
        return round(time.monotonic() - started, 1)

    def last_lines(self, n: int = 3) -> list[str]:
        return self.log.read_text().strip().splitlines()[-n:]


def stop_s(serve: ServeProcess) -> float:
    started = time.monotonic()
    serve.process.send_signal(signal.SIGTERM)
    serve.process.wait(timeout=120)
    return round(time.monotonic() - started, 1)


def broker_restart_part(broker: Any, work: Path, table: str, down_s: float) -> dict[str, Any]:
    """Serve and ingest across a broker that comes back empty."""
    kafka = KafkaSettings()
    n_series, before, after = 5, 30, 30
    produce(kafka, fleet_steps(n_series, range(before)))
    long_idle = {"ROLLCAST_INGEST_IDLE_S": "3600"}
    with ServeProcess(work / "broker-serve.log", idle_s=3600) as serve:
        ingest = IngestProcess(work / "broker-ingest.log", long_idle)
        warm = n_series * (before - LOOKBACK + 1)
        wait_for(lambda: serve.metric("forecasts_out_total") >= warm, "forecasts before", 300)
        wait_for(lambda: stored_rows(table) >= n_series * before, "rows before", 300)
        back = restart_empty(broker, kafka, down_s)
        produce(kafka, fleet_steps(n_series, range(before, before + after)))
        first_s = _seconds_until(lambda: serve.metric("forecasts_out_total") > warm, back, 300)
        goal = every(n_series, range(before, before + after))
        _seconds_until(lambda: goal <= stored_steps(table), back, 300)
        _seconds_until(lambda: serve.metric("forecasts_out_total") >= warm + len(goal), back, 120)
        serve_stop_s, ingest_stop_s = stop_s(serve), ingest.stop_s()
    issued = issued_steps(kafka, len(goal))
    return {
        "down_s": down_s,
        "forecasts_lost_after_restart": len(goal - issued),
        "rows_lost_after_restart": len(goal - stored_steps(table)),
        "first_forecast_after_return_s": first_s,
        "serve_sigterm_s": serve_stop_s,
        "ingest_sigterm_s": ingest_stop_s,
    }


def _seconds_until(condition: Any, since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` until ``condition`` held; None if it did not within the limit."""
    try:
        wait_for(condition, "the condition", timeout_s)
    except AssertionError:
        return None
    return round(time.monotonic() - since, 1)


def clock_jump_part(work: Path, table: str) -> dict[str, Any]:
    """Ten good steps, one record 23 steps ahead, then 59 more good steps, per series."""
    kafka = KafkaSettings()
    n_series, jump = 5, 23
    far = 9 + jump
    good = [s for s in range(70) if s != far]
    stream = []
    for i in range(n_series):
        stream += [observation(f"s{i}", s, float(s % 24 + i)) for s in range(10)]
        stream.append(observation(f"s{i}", far, -1.0))
        stream += [observation(f"s{i}", s, float(s % 24 + i)) for s in good[10:]]
    produce(kafka, stream)
    with ServeProcess(work / "jump-serve.log", idle_s=5) as serve:
        serve.wait(timeout_s=600)
    IngestProcess(work / "jump-ingest.log").wait()
    forecastable = every(n_series, [s for s in good if s >= LOOKBACK - 1])
    letters = read_records(kafka, kafka.topic_deadletter, 2 * n_series, timeout_s=60)
    return {
        "good_records": n_series * (len(good) - 10),
        "good_forecasts_lost": len(forecastable - issued_steps(kafka, len(forecastable))),
        "good_rows_lost": len(every(n_series, good) - stored_steps(table)),
        "far_records_became": dict(Counter(letter.header("reason") for letter in letters)),
    }


def concurrent_ingest_part(work: Path, table: str) -> dict[str, Any]:
    """Two ingests, separate consumer groups, one table: each reads every record."""
    kafka = KafkaSettings()
    n_series, n_steps = 200, 100
    produce(kafka, fleet_steps(n_series, range(n_steps)))
    ingests = [
        IngestProcess(work / f"twin-{k}.log", {"ROLLCAST_INGEST_GROUP": f"twin-{k}"})
        for k in range(2)
    ]
    exit_codes = [ingest.wait() for ingest in ingests]
    goal = every(n_series, range(n_steps))
    held = stored_steps(table)
    return {
        "records": len(goal),
        "exit_codes": exit_codes,
        "rows_lost": len(goal - held),
        "rows_stored_twice": stored_rows(table) - len(held),
    }


def disk_full_part(work: Path, table_dir: Path) -> dict[str, Any]:
    """Ingest onto a 256 KiB tmpfs; the tmpfs grown to 256 MiB; ingest again."""
    table_dir.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(table_dir)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    try:
        return _fill_and_retry(work, table_dir)
    finally:
        subprocess.run(["umount", str(table_dir)], check=False)


def _fill_and_retry(work: Path, table_dir: Path) -> dict[str, Any]:
    kafka = KafkaSettings()
    n_series, n_steps = 1000, 100
    produce(
        kafka,
        (
            observation(f"s{i}", s, (i * 7919 + s) / 13)
            for s in range(n_steps)
            for i in range(n_series)
        ),
    )
    table = {"ROLLCAST_STORE_URI": str(table_dir / "series")}
    full = IngestProcess(work / "full-ingest.log", table)
    full_rc, full_lines = full.wait(), full.last_lines()
    files_after_failure = sum(1 for p in table_dir.rglob("*") if p.is_file())
    grow = ["mount", "-o", "remount,size=256m", str(table_dir)]
    subprocess.run(grow, check=True)
    again_rc = IngestProcess(work / "again-ingest.log", table).wait()
    goal = every(n_series, range(n_steps))
    return {
        "records": len(goal),
        "full_exit_code": full_rc,
        "full_last_lines": full_lines,
        "files_left_after_failure": files_after_failure,
        "second_exit_code": again_rc,
        "rows_lost": len(goal - stored_steps(str(table_dir / "series"))),
    }
