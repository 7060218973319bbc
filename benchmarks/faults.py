"""Faults a hostile producer or a bad day can cause, tried against `rollcast serve` (issue 9).

    python benchmarks/faults.py            # about 10 minutes on a 2-core VM
    python benchmarks/faults.py --json     # the figures as one JSON object on the last line
    python benchmarks/faults.py --results benchmarks/results/faults.jsonl   # and appended as a row

Each part runs `rollcast serve` (and `rollcast ingest`) as processes, as an operator would, on
the embedded broker with a tiny registered model:

* **poison**: ``--bad`` hostile records of every kind in ``benchmarks/poison.py`` (drawn by
  hypothesis with a fixed seed) inside a healthy fleet, through serve and then ingest; counts
  crashes (non-zero exits), the share dead-lettered, and good records lost;
* **restarts**: a paced stream while serve is SIGKILLed ``--kills`` times; records lost is the
  number of (series, step) never forecast;
* **stall**: the broker frozen (SIGSTOP) for ``--stall-s`` seconds while serve runs; serve must
  still be running afterwards and forecast every step;
* **flood**: ``--flood`` records of new keys against 1,000 established series; RSS of the serve
  process before and after, and forecasts of established series lost after the flood.

Operations under real faults (issue 20):

* **broker_restart**: the broker stopped for ``--down-s`` seconds under a running serve and
  ingest and started again empty on its port; the (series, step)s produced after its return
  that were never forecast or never stored, and the seconds from its return to the first
  forecast;
* **clock_jump**: each series gets one record 23 steps ahead of its clock, then 59 good ones;
  good records lost (not forecast, not stored) and what the far record became;
* **concurrent_ingest**: two `rollcast ingest` processes (separate consumer groups) on one
  table; rows lost and rows stored twice;
* **disk_full**: `rollcast ingest` onto a table on a 1 MiB tmpfs (needs root to mount); its exit
  code and the lines it printed, then the tmpfs grown and ingest run again: rows lost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import operations
from poison import Poison, poisons
from serve_harness import (
    LOOKBACK,
    PacedProducer,
    ServeProcess,
    fleet_steps,
    observation,
    produce,
    read_forecasts,
    read_records,
    register,
    step_of,
    tiny_model,
    wait_for,
)

from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings
from pipeline.kafka_io import KafkaTransport

FLEET = 3


def fresh_env(broker: EmbeddedBroker, work: Path, name: str) -> KafkaSettings:
    """ROLLCAST_* variables for one part: its own topics, groups, store and MLflow."""
    env = {
        "ROLLCAST_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "ROLLCAST_TOPIC_OBSERVATIONS": f"observations-{name}",
        "ROLLCAST_TOPIC_FORECASTS": f"forecasts-{name}",
        "ROLLCAST_TOPIC_DEADLETTER": f"deadletter-{name}",
        "ROLLCAST_INGEST_GROUP": f"ingest-{name}",
        "ROLLCAST_SERVE_GROUP": f"serve-{name}",
        "ROLLCAST_INGEST_IDLE_S": "5",
        "ROLLCAST_DATA_DIR": str(work / name),
        "ROLLCAST_MLFLOW_TRACKING_URI": f"sqlite:///{work / name / 'mlflow.db'}",
        "ROLLCAST_MODEL_NAME": f"faults-{name}",
    }
    (work / name).mkdir(parents=True)
    os.environ.update(env)
    kafka = KafkaSettings()
    transport = KafkaTransport(kafka)
    transport.create_topics(transport.topics.all(), partitions=2)
    register(tiny_model())
    return kafka


def draw_poisons(n: int, seed: int) -> list[Poison]:
    from hypothesis import strategies as st
    from hypothesis.errors import NonInteractiveExampleWarning

    warnings.simplefilter("ignore", NonInteractiveExampleWarning)
    import random

    random.seed(seed)
    strategy = st.lists(poisons, min_size=100, max_size=100)
    drawn: list[Poison] = []
    while len(drawn) < n:
        drawn += strategy.example()
    return drawn[:n]


def poison_part(broker: EmbeddedBroker, work: Path, n_bad: int, seed: int) -> dict[str, Any]:
    kafka = fresh_env(broker, work, "poison")
    bad = draw_poisons(n_bad, seed)
    good = fleet_steps(FLEET, range(1))
    rest = fleet_steps(FLEET, range(1, 200))
    stride = max(1, len(rest) // max(1, len(bad)))
    stream: list[tuple[bytes | None, bytes | None]] = list(good)
    for i, poison in enumerate(bad):
        stream += rest[i * stride : (i + 1) * stride]
        stream.append((poison.key, poison.value))
    stream += rest[len(bad) * stride :]
    produce(kafka, stream)  # type: ignore[arg-type]

    with ServeProcess(work / "poison-serve.log", idle_s=5) as serve:
        serve_rc = serve.wait(timeout_s=600)
    ingest_rc = _run_cli(["ingest"], work / "poison-ingest.log")
    letters = read_records(kafka, kafka.topic_deadletter, 2 * len(bad), timeout_s=120)
    reasons = Counter(letter.header("reason") for letter in letters)
    expected_forecasts = FLEET * (200 - LOOKBACK + 1)
    forecasts = read_forecasts(kafka, expected_forecasts)
    issued = {(f["series"], step_of(f["issued_at"])) for f in forecasts}
    return {
        "bad_records": len(bad),
        "kinds": len({p.kind for p in bad}),
        "crashes": int(serve_rc != 0) + int(ingest_rc != 0),
        "dead_lettered_pct": round(100 * len(letters) / (2 * len(bad)), 2),
        "reasons_match": reasons == Counter(p.reason for p in bad + bad),
        "good_forecasts_lost": expected_forecasts - len(issued),
    }


def _run_cli(args: list[str], log: Path) -> int:
    import subprocess

    with log.open("w") as out:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args], stdout=out, stderr=subprocess.STDOUT
        ).returncode


def restart_part(broker: EmbeddedBroker, work: Path, kills: int) -> dict[str, Any]:
    kafka = fresh_env(broker, work, "restarts")
    # About 13 s of stream between kills: a restarted member needs one session timeout (10 s).
    n_series, n_steps = 10, 40 * (kills + 1)
    producer = PacedProducer(kafka, n_series, n_steps, per_s=3)
    producer.start()
    for k in range(kills):
        with ServeProcess(work / f"restart-{k}.log", idle_s=600) as serve:
            kill_at = (k + 1) * n_steps // (kills + 1)  # steps sent when this one is killed
            wait_for(lambda: serve.metric("assigned_partitions") == 2, "serve to join", 120)
            wait_for(lambda at=kill_at: producer.steps_sent >= at, "the stream", 300)
            serve.kill()
    producer.join(timeout=600)
    with ServeProcess(work / "restart-last.log", idle_s=8) as serve:
        rc = serve.wait(timeout_s=600)
    expected = {(f"s{i}", s) for i in range(n_series) for s in range(LOOKBACK - 1, n_steps)}
    forecasts = read_forecasts(kafka, len(expected))
    issued = {(f["series"], step_of(f["issued_at"])) for f in forecasts}
    return {
        "sigkills": kills,
        "records": n_series * n_steps,
        "records_lost": len(expected - issued),
        "repeats": len(forecasts) - len(issued),
        "crashes": int(rc != 0),
    }


def stall_part(broker: EmbeddedBroker, work: Path, stall_s: float) -> dict[str, Any]:
    kafka = fresh_env(broker, work, "stall")
    n_series, n_steps = 5, 400
    expected = {(f"s{i}", s) for i in range(n_series) for s in range(LOOKBACK - 1, n_steps)}
    producer = PacedProducer(kafka, n_series, n_steps, per_s=4)
    with ServeProcess(work / "stall-serve.log", idle_s=3600) as serve:
        wait_for(lambda: serve.metric("assigned_partitions") == 2, "serve to join", 120)
        producer.start()
        wait_for(lambda: serve.metric("forecasts_out_total") >= 20, "forecasts", 120)
        broker.stall()
        time.sleep(stall_s)
        broker.resume()
        alive_after = serve.process.poll() is None
        producer.join(timeout=900)
        done = lambda: serve.metric("forecasts_out_total") >= len(expected)  # noqa: E731
        wait_for(done, "every forecast", 300)
        rc = serve.stop()
    forecasts = read_forecasts(kafka, len(expected))
    issued = {(f["series"], step_of(f["issued_at"])) for f in forecasts}
    return {
        "stall_s": stall_s,
        "serve_alive_after_stall": alive_after,
        "exit_code": rc,
        "forecasts_lost": len(expected - issued),
    }


def flood_part(broker: EmbeddedBroker, work: Path, flood: int) -> dict[str, Any]:
    kafka = fresh_env(broker, work, "flood")
    n_series = 1000
    produce(kafka, fleet_steps(n_series, range(LOOKBACK)))
    with ServeProcess(work / "flood-serve.log", idle_s=600) as serve:
        wait_for(lambda: serve.metric("records_in_total") >= n_series * LOOKBACK, "warm-up", 300)
        rss_before = _rss_mb(serve.process.pid)
        junk = (observation(f"junk-{i}", 0, 1.0) for i in range(flood))
        produce(kafka, junk)
        total = n_series * LOOKBACK + flood
        wait_for(lambda: serve.metric("records_in_total") >= total, "the flood", 900)
        rss_after = _rss_mb(serve.process.pid)
        produce(kafka, fleet_steps(n_series, [LOOKBACK]))
        wait_for(lambda: serve.metric("records_in_total") >= total + n_series, "after", 300)
        evicted = serve.metric("series_evicted_total")
        new_evicted = serve.metric("new_series_evicted_total")
        serve.stop()
    forecasts = read_forecasts(kafka, n_series * 2)
    after = {f["series"] for f in forecasts if step_of(f["issued_at"]) == LOOKBACK}
    return {
        "established_series": n_series,
        "flood_keys": flood,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "established_evicted": evicted,
        "new_series_evicted": new_evicted,
        "established_forecasts_lost_after_flood": n_series - len(after),
    }


PARTS = ("poison", "restarts", "stall", "flood", "broker_restart", "clock_jump")
PARTS += ("concurrent_ingest", "disk_full")


def operations_parts(broker: EmbeddedBroker, work: Path, down_s: float) -> dict[str, Any]:
    """Issue 20's parts, each on topics, a table and an MLflow store of its own."""

    def table(name: str) -> str:
        fresh_env(broker, work, name)
        return str(work / name / "series")

    return {
        "broker_restart": lambda: operations.broker_restart_part(
            broker, work, table("broker_restart"), down_s
        ),
        "clock_jump": lambda: operations.clock_jump_part(work, table("clock_jump")),
        "concurrent_ingest": lambda: operations.concurrent_ingest_part(
            work, table("concurrent_ingest")
        ),
        "disk_full": lambda: operations.disk_full_part(
            work, Path(table("disk_full")).with_name("full")
        ),
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    from results import add_results_option, append_if_asked

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bad", type=int, default=2000, help="hostile records in the poison part")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--stall-s", type=float, default=90.0)
    parser.add_argument("--flood", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--down-s", type=float, default=20.0, help="broker_restart: seconds down")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--json", action="store_true")
    add_results_option(parser)
    args = parser.parse_args()
    os.environ["ROLLCAST_METRICS_PORT"] = "0"
    results: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        parts = {
            "poison": lambda: poison_part(broker, work, args.bad, args.seed),
            "restarts": lambda: restart_part(broker, work, args.kills),
            "stall": lambda: stall_part(broker, work, args.stall_s),
            "flood": lambda: flood_part(broker, work, args.flood),
            **operations_parts(broker, work, args.down_s),
        }
        for name in args.parts.split(","):
            started = time.monotonic()
            results[name] = {**parts[name](), "wall_s": round(time.monotonic() - started, 1)}
            print(name, json.dumps(results[name]), flush=True)
    if args.json:
        print(json.dumps(results))
    append_if_asked(args, "faults", results)


if __name__ == "__main__":
    main()
