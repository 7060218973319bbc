"""The registry's outcomes on a real MLflow store: no champion, unreachable, the local copy,
and a library that leaves MLflow's process-global tracking URI alone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import pytest
from serve_harness import register, tiny_model

from pipeline import monitoring, registry, runs
from pipeline.config import DriftSettings, KafkaSettings, MlflowSettings, StoreSettings
from pipeline.evaluate import DriftCheck
from pipeline.swap import LocalCopy
from pipeline.tracking import connect, connect_reader
from pipeline.wiring import start_champion

pytestmark = pytest.mark.integration


def test_no_model_and_no_alias_both_mean_no_champion(rollcast_env: KafkaSettings) -> None:
    tracking = connect(MlflowSettings(), StoreSettings())
    assert registry.champion_version(tracking) is None

    register(tiny_model(), promote=False)

    assert registry.champion_version(tracking) is None


def test_an_unreachable_registry_is_not_no_champion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = MlflowSettings(mlflow_tracking_uri="http://127.0.0.1:9")  # nothing listens
    tracking = connect_reader(settings)

    with pytest.raises(registry.RegistryUnavailableError):
        registry.champion_version(tracking)


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

    loaded = registry.load_version(connect_reader(MlflowSettings()), version)

    assert loaded.version == version
    assert list(scratch.iterdir()) == []


# The ways a process has a default tracking URI of its own: the variable, or the fluent setter.
PROCESS_DEFAULTS = ("environment", "set_tracking_uri")


@pytest.fixture(params=PROCESS_DEFAULTS)
def process_default(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A tracking URI the process uses by default, set as an application would set it."""
    uri = f"sqlite:///{tmp_path / 'default.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    if request.param == "set_tracking_uri":
        from mlflow.tracking._tracking_service import utils

        monkeypatch.setattr(utils, "_tracking_uri", None)  # restored after the test
        mlflow.set_tracking_uri(uri)
    return uri


def test_logging_and_registering_leave_the_process_tracking_uri_alone(
    process_default: str, tmp_path: Path
) -> None:
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), _uri_variables())
    settings = MlflowSettings(
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'rollcast' / 'mlflow.db'}", model_name="m"
    )
    tracking = connect(settings, StoreSettings(data_dir=tmp_path / "data"))

    version = runs.register_checkpoint(tracking, tiny_model(), "test")
    registry.promote(tracking, version)
    with runs.search_run(tracking, "tune", {"budget.trials": 1}) as search_id:
        pass

    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), _uri_variables()) == before
    assert mlflow.get_tracking_uri() == process_default
    assert not (tmp_path / "default.db").exists()  # nothing went to the process default
    reader = connect_reader(settings)
    assert registry.champion_version(reader) == version
    assert registry.load_champion(reader).version == version
    run = tracking.client.get_run(search_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == tracking.experiment_id


def test_a_run_an_exception_escapes_from_is_failed(rollcast_env: KafkaSettings) -> None:
    tracking = connect(MlflowSettings(), StoreSettings())

    with pytest.raises(RuntimeError), runs.search_run(tracking, "tune", {}) as search_id:
        raise RuntimeError("the search broke")

    assert tracking.client.get_run(search_id).info.status == "FAILED"


def test_a_reader_logs_no_runs(rollcast_env: KafkaSettings) -> None:
    connect(MlflowSettings(), StoreSettings())  # the store exists
    reader = connect_reader(MlflowSettings())

    with pytest.raises(registry.RegistryError, match="a reader's"):
        runs.register_checkpoint(reader, tiny_model(), "test")


def _uri_variables() -> tuple[str | None, str | None]:
    return os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI")


def test_a_collapse_of_the_online_coverage_asks_for_a_retrain(rollcast_env: KafkaSettings) -> None:
    tracking = connect(MlflowSettings(), StoreSettings())
    version = runs.register_checkpoint(tracking, tiny_model(), "test")
    run_id = tracking.client.get_model_version(tracking.settings.model_name, version).run_id
    tracking.client.log_metric(str(run_id), "val_mse", 0.2)
    # Two reports of serve: the MSE no worse than validation, the 80% interval holding 60%
    # then 50% of the actuals (400 values each).
    monitoring.log_online_error(tracking, version, 0.2, 400, 400, {0.8: 0.6, 0.95: 0.9})
    monitoring.log_online_error(tracking, version, 0.2, 400, 800, {0.8: 0.5, 0.95: 0.9})

    coverage = monitoring.online_coverage(tracking, version, min_values=800)
    figures = monitoring.online_error(tracking, version, 800)

    assert coverage == pytest.approx({0.8: 0.55, 0.95: 0.9})
    assert figures is not None
    check = DriftCheck(*figures, 2.0, 800, coverage, DriftSettings().drift_coverage_drop)
    assert check.ratio == pytest.approx(1.0) and check.collapsed == [0.8] and check.retrain
    assert "intervals cover 55% at 80%" in check.reason()
