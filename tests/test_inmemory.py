"""The ingest and serve loops on the in-memory transport: their delivery rules, without a broker.

The same loops run on Kafka in the integration tests; here the transport port is filled by
:mod:`pipeline.inmemory`, which is the point of having a port.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.delta_store import DeltaSeriesStore
from pipeline.forecast import LoadedForecaster
from pipeline.ingest import IngestPlan, run_ingest
from pipeline.inmemory import MemoryTransport
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.serve import RollingForecaster, run_serve
from pipeline.transport import Rebalance

LOOKBACK, HORIZON, HOUR_MS = 4, 2, 3_600_000


def produce(transport: MemoryTransport, series: str, steps: range) -> None:
    sink = transport.sink()
    for step in steps:
        value = {"series": series, "ts": step * HOUR_MS, "values": {"load": float(step)}}
        sink.send_raw(transport.topics.observations, series.encode(), json.dumps(value).encode())
    sink.flush()


def serve_until_idle(transport: MemoryTransport, rewind: int = 0) -> list[int]:
    """A fresh serve process: the steps it forecast, in order."""
    before = len(transport.messages(transport.topics.forecasts))
    torch.manual_seed(0)
    config = ForecasterConfig(("load",), LOOKBACK, HORIZON, architecture="dlinear")
    rolling = RollingForecaster(LoadedForecaster("m", "1", build_forecaster(config)), 100)
    source = transport.source(transport.topics.observations, "serve", rebalance=Rebalance(rewind))
    run_serve(source, transport.sink(), rolling, lambda stats, idle: idle)
    published = transport.messages(transport.topics.forecasts)[before:]
    return [json.loads(r.value or b"{}")["issued_at"] for r in published]


def hours(*steps: int) -> list[str]:
    return [f"1970-01-01T{step:02d}:00:00Z" for step in steps]


def test_ingest_stores_good_records_dead_letters_bad_ones_and_commits(tmp_path: Path) -> None:
    transport = MemoryTransport()
    produce(transport, "a", range(6))
    sink = transport.sink()
    sink.send_raw(transport.topics.observations, b"a", b"not json")
    sink.flush()
    store = DeltaSeriesStore(str(tmp_path / "series"))

    hourly = IngestPlan(idle_s=0.0, freq="1h")
    report = run_ingest(transport.source("observations", "ingest"), store, sink, hourly)

    assert report.rows_written == 6 and len(store.read("a")) == 6
    letters = transport.messages(transport.topics.deadletter)
    assert [r.header("reason") for r in letters] == ["malformed_json"]
    again = run_ingest(transport.source("observations", "ingest"), store, sink, hourly)
    assert again.records_in == 0  # everything was committed


def test_serve_forecasts_each_step_once_the_window_is_whole() -> None:
    transport = MemoryTransport()
    produce(transport, "a", range(6))

    assert serve_until_idle(transport) == hours(3, 4, 5)


@pytest.mark.parametrize(("rewind", "after_restart"), [(LOOKBACK, hours(6, 7)), (0, [])])
def test_a_restarted_server_rebuilds_its_windows_from_the_rewind(
    rewind: int, after_restart: list[str]
) -> None:
    transport = MemoryTransport()
    produce(transport, "a", range(6))
    serve_until_idle(transport)
    produce(transport, "a", range(6, 8))

    # With the rewind, the first new step is forecast at once and nothing is published twice;
    # without it, the series warms up again from scratch.
    assert serve_until_idle(transport, rewind=rewind) == after_restart


def test_records_not_committed_are_read_again_by_the_next_member() -> None:
    transport = MemoryTransport()
    produce(transport, "a", range(3))

    first = transport.source("observations", "g").poll()  # a crash before the commit
    second = transport.source("observations", "g")
    again = second.poll()
    second.commit(again)

    assert [r.offset for r in again] == [r.offset for r in first] == [0, 1, 2]
    assert transport.source("observations", "g").poll() == []
