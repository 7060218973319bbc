"""The demo checks its options, its data and its port before it touches the store."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from flows.demo import DemoError, DemoOptions, run_demo
from pipeline.metrics import MetricsPortError


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir whose store already holds a series, as after an earlier demo."""
    monkeypatch.setenv("ROLLCAST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ROLLCAST_METRICS_PORT", "0")
    series = tmp_path / "store" / "s0.parquet"
    series.parent.mkdir()
    series.write_bytes(b"kept")
    return series


def test_a_missing_csv_is_refused_and_the_store_kept(stored: Path) -> None:
    with pytest.raises(DemoError, match="no such file"):
        run_demo(DemoOptions(data=Path("/nonexistent.csv")))
    assert stored.read_bytes() == b"kept"


@pytest.mark.parametrize("option", ["series", "records", "max_steps"])
def test_a_count_below_one_is_refused_and_the_store_kept(stored: Path, option: str) -> None:
    with pytest.raises(DemoError, match="at least 1"):
        run_demo(DemoOptions(**{option: 0}))
    assert stored.read_bytes() == b"kept"


def test_a_busy_metrics_port_is_refused_before_training(
    stored: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        monkeypatch.setenv("ROLLCAST_METRICS_PORT", str(busy.getsockname()[1]))
        with pytest.raises(MetricsPortError, match="ROLLCAST_METRICS_PORT"):
            run_demo(DemoOptions())
    assert stored.read_bytes() == b"kept"
