"""The registry's outcomes on a real MLflow store: no champion, unreachable, and the local copy."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_harness import free_port, register, tiny_model, wait_for

from pipeline import registry
from pipeline.config import KafkaSettings, MlflowSettings, StoreSettings
from pipeline.swap import LocalCopy
from pipeline.wiring import start_champion

pytestmark = pytest.mark.integration


def test_no_model_and_no_alias_both_mean_no_champion(rollcast_env: KafkaSettings) -> None:
    settings = MlflowSettings()
    registry.configure(settings, StoreSettings())
    assert registry.champion_version(settings) is None

    register(tiny_model(), promote=False)

    assert registry.champion_version(settings) is None


def test_an_unreachable_registry_is_not_no_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = MlflowSettings(mlflow_tracking_uri="http://127.0.0.1:9")  # nothing listens
    registry.connect_reader(settings)

    with pytest.raises(registry.RegistryUnavailableError):
        registry.champion_version(settings)


def test_serve_starts_from_its_local_copy_while_the_registry_is_down(
    rollcast_env: KafkaSettings, tmp_path: Path
) -> None:
    version = register(tiny_model())
    copy = LocalCopy(tmp_path / "champion", MlflowSettings().model_name)
    served = start_champion(MlflowSettings(), copy)
    gone = MlflowSettings(mlflow_tracking_uri=f"sqlite:///{tmp_path / 'moved.db'}")

    restarted = start_champion(gone, copy)

    assert served.version == restarted.version == version
    assert not (tmp_path / "moved.db").exists()  # no empty store created in its place
    with pytest.raises(registry.RegistryUnavailableError, match="no local copy"):
        start_champion(gone, LocalCopy(tmp_path / "elsewhere", "m"))


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` with proxied artifacts: downloads go through HTTP, as in compose."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = (tmp_path / "mlflow.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/health"), "mlflow server", timeout_s=120)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def test_loading_a_version_through_a_server_leaves_no_temporary_files(
    rollcast_env: KafkaSettings,
    mlflow_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_MLFLOW_TRACKING_URI", mlflow_server)
    version = register(tiny_model())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    loaded = registry.load_version(MlflowSettings(), version)

    assert loaded.version == version
    assert list(scratch.iterdir()) == []
