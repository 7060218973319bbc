"""The demo checks its options, its data and its port before it touches the store."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest

from flows.demo import DemoError, DemoOptions, run_demo
from pipeline.config import StoreSettings
from pipeline.delta_store import DeltaSeriesStore
from pipeline.metrics import MetricsPortError


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A data dir whose series table already holds a series, as after an earlier demo."""
    monkeypatch.setenv("ROLLCAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ROLLCAST_METRICS_PORT", "0")
    uri = StoreSettings().table_uri
    ts = pd.Timestamp("2024-01-01", tz="UTC")
    DeltaSeriesStore(uri).append(pd.DataFrame({"series": ["s0"], "ts": [ts], "load": [1.0]}))
    return uri


def kept(uri: str) -> bool:
    """The table still holds the earlier demo's series, as it was."""
    return DeltaSeriesStore(uri).read("s0")["load"].tolist() == [1.0]


def test_a_missing_csv_is_refused_and_the_store_kept(stored: str) -> None:
    with pytest.raises(DemoError, match="no such file"):
        run_demo(DemoOptions(data=Path("/nonexistent.csv")))
    assert kept(stored)


@pytest.mark.parametrize("option", ["series", "records", "max_steps"])
def test_a_count_below_one_is_refused_and_the_store_kept(stored: str, option: str) -> None:
    with pytest.raises(DemoError, match="at least 1"):
        run_demo(DemoOptions(**{option: 0}))
    assert kept(stored)


def test_a_busy_metrics_port_is_refused_before_training(
    stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        monkeypatch.setenv("ROLLCAST_METRICS_PORT", str(busy.getsockname()[1]))
        with pytest.raises(MetricsPortError, match="ROLLCAST_METRICS_PORT"):
            run_demo(DemoOptions())
    assert kept(stored)
