"""Shared fixtures. Integration tests use the real embedded broker, a real MLflow sqlite store
and a real Prefect API (the test harness); nothing of these is mocked."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings
from pipeline.kafka_io import KafkaTransport

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The operator's-eye harness (serve_harness, poison) is shared with benchmarks/faults.py, which
# must run without tests/, so it lives with the benchmarks; appended, it shadows nothing.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    # As flows/__init__ gives Rollcast's processes: a first start migrates a new database.
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def rollcast_env(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> KafkaSettings:
    """Fresh topics, consumer groups, data dir and MLflow store for one test, set as a user would:
    through ROLLCAST_* environment variables. Returns the Kafka settings they describe."""
    run = uuid.uuid4().hex[:8]
    env = {
        "ROLLCAST_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "ROLLCAST_TOPIC_OBSERVATIONS": f"observations-{run}",
        "ROLLCAST_TOPIC_FORECASTS": f"forecasts-{run}",
        "ROLLCAST_TOPIC_DEADLETTER": f"deadletter-{run}",
        "ROLLCAST_INGEST_GROUP": f"ingest-{run}",
        "ROLLCAST_SERVE_GROUP": f"serve-{run}",
        "ROLLCAST_METRICS_PORT": "0",
        "ROLLCAST_INGEST_IDLE_S": "3",
        "ROLLCAST_DATA_DIR": str(tmp_path / "data"),
        "ROLLCAST_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ROLLCAST_MODEL_NAME": f"forecaster-{run}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kafka = KafkaSettings()
    transport = KafkaTransport(kafka)
    transport.create_topics(transport.topics.all(), partitions=2)
    return kafka


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a fresh sqlite store, with proxied artifacts (downloads go
    through HTTP, as in compose); yields its URL."""
    from serve_harness import free_port, wait_for

    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    with (tmp_path / "mlflow.log").open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: answers(f"{url}/health"), "mlflow server", timeout_s=180)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False
