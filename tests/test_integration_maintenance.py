"""The series table's upkeep as an operator sees it: `rollcast store info | compact | migrate`,
training on an old version (`rollcast train --as-of`) and the MLflow run that says which version
it read. Real Delta files, a real MLflow sqlite store, the real Prefect test harness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from mlflow.tracking import MlflowClient

from flows.cli import main
from pipeline.config import MlflowSettings, Settings, StoreSettings, TrainSettings
from pipeline.delta_store import DeltaSeriesStore
from pipeline.parquet_store import ParquetSeriesStore
from pipeline.training import TrainingSettings, load_data, load_table
from pipeline.windows import format_timestamp

pytestmark = pytest.mark.integration

START = pd.Timestamp("2024-01-01", tz="UTC")
KEY = ["series", "ts"]


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir and an MLflow store of this test's own, set as a user would; no broker."""
    data_dir = tmp_path / "data"
    for name, value in {
        "ROLLCAST_DATA_DIR": str(data_dir),
        "ROLLCAST_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "ROLLCAST_MODEL_NAME": f"forecaster-{tmp_path.name}",
    }.items():
        monkeypatch.setenv(name, value)
    return data_dir


@pytest.fixture
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "ROLLCAST_LOOKBACK": 48,
        "ROLLCAST_HORIZON": 12,
        "ROLLCAST_HIDDEN_SIZE": 16,
        "ROLLCAST_NUM_LAYERS": 1,
        "ROLLCAST_SEGMENT_LEN": 24,
        "ROLLCAST_PROMOTION_GATE": "false",  # four steps: the run is tested, not the gate
    }.items():
        monkeypatch.setenv(name, str(value))


def steps(
    series: str, n: int, start: int = 0, offset: float = 0.0, origin: pd.Timestamp = START
) -> pd.DataFrame:
    """``n`` hourly rows of one series from step ``start``; ``offset`` marks a later write."""
    t = np.arange(start, start + n, dtype=float)
    return pd.DataFrame(
        {
            "series": series,
            "ts": pd.date_range(origin + pd.Timedelta(hours=start), periods=n, freq="1h"),
            "load": np.sin(2 * np.pi * t / 24) + offset,
            "temp": np.cos(2 * np.pi * t / 24) + offset,
        }
    )


def table() -> DeltaSeriesStore:
    settings = StoreSettings()
    return DeltaSeriesStore(settings.table_uri, settings.store_options)


def stored_rows(store: DeltaSeriesStore) -> pd.DataFrame:
    """Every row in the table's live files, as stored (repeats included), sorted."""
    frame = DeltaTable(store.uri).to_pandas()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame.sort_values([*KEY, "stored_at"], kind="stable").reset_index(drop=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    columns = [*KEY, "load", "temp"]
    got = got[columns].sort_values(KEY).reset_index(drop=True)
    expected = expected[columns].sort_values(KEY).reset_index(drop=True)
    got["ts"] = pd.to_datetime(got["ts"], utc=True).dt.as_unit("us")
    expected["ts"] = pd.to_datetime(expected["ts"], utc=True).dt.as_unit("us")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_store_info_and_compact_merge_files_and_keep_each_first_stored_row(
    local_env: Path, prefect_api: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = table()
    first = [steps(s, 10, start=10 * k) for k in range(6) for s in ("a", "b")]  # 12 small files
    again = [steps(s, 15, start=5, offset=100.0) for s in ("a", "b")]  # steps 5..19 once more
    for frame in [*first, *again]:
        store.append(frame)
    repeats = 2 * 15

    code, out, _ = run_cli(["store", "info", "--json"], capsys)
    before = json.loads(out)
    assert code == 0
    assert before["files"] == 14 and before["rows"] == 2 * 60 + repeats
    assert before["series"] == 2 and before["channels"] == ["load", "temp"]
    assert before["version"] == 13 and before["location"] == store.uri and before["bytes"] > 0

    code, out, _ = run_cli(["store", "compact", "--retention-hours", "0"], capsys)
    assert code == 0
    assert "files                  14 -> 1" in out
    assert f"repeated rows removed  {repeats}" in out
    assert "files vacuumed" in out and "(unused for 0 h or more)" in out
    assert "files vacuumed         0 " not in out

    after = stored_rows(store)
    assert not after.duplicated(KEY).any()
    same_rows(after, pd.concat(first))  # every step, with the value stored first
    code, out, _ = run_cli(["store", "info"], capsys)
    assert code == 0
    assert f"rows          {2 * 60} " in out and "files         1" in out
    assert store.info().files < before["files"]


def test_compact_json_reports_what_it_did_and_keeps_old_versions_within_retention(
    local_env: Path, prefect_api: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = table()
    store.append(steps("a", 30))
    store.append(steps("a", 10, offset=50.0))

    code, out, _ = run_cli(["store", "compact", "--json"], capsys)  # retention: 168 h
    report = json.loads(out)

    assert code == 0
    assert report["duplicates_removed"] == 10 and report["files_vacuumed"] == 0
    assert report["files"][0] == 2 and report["rows"] == [40, 30]
    same_rows(store.rows(version=0).frame(0), steps("a", 30))  # version 0 is still readable


def test_train_as_of_a_vacuumed_or_missing_version_says_so_without_a_traceback(
    local_env: Path, prefect_api: None, capsys: pytest.CaptureFixture[str]
) -> None:
    store = table()
    store.append(steps("a", 300))
    store.append(steps("a", 10, offset=50.0))

    code, _, err = run_cli(["train", "--as-of", "7"], capsys)
    assert code == 2
    assert f"the series table {store.uri} has no version 7: its newest is 1" in err
    assert "Traceback" not in err

    assert run_cli(["store", "compact", "--retention-hours", "0"], capsys)[0] == 0
    code, _, err = run_cli(["train", "--as-of", "0"], capsys)
    assert code == 2
    assert f"version 0 of the series table {store.uri} is gone: compaction deleted 1 of" in err
    assert "Traceback" not in err


def test_store_migrate_moves_every_row_of_a_parquet_store(
    local_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = pd.concat(
        [steps("a", 40), steps("b", 25, start=7), steps("a/with slash", 5)], ignore_index=True
    )
    folder = tmp_path / "old-store"
    ParquetSeriesStore(folder).append(old)

    code, out, _ = run_cli(["store", "migrate", "--from", str(folder)], capsys)

    assert code == 0
    assert f"migrated {len(old)} rows from {folder}" in out
    rows = table().rows()
    assert rows.series == sorted(old["series"].unique())
    same_rows(pd.concat([rows.frame(i) for i in range(len(rows.series))]), old)


def test_store_migrate_reads_the_old_default_folder_and_says_when_there_is_nothing(
    local_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["store", "migrate"], capsys)
    assert code == 2
    assert f"nothing to migrate: {StoreSettings().legacy_store_dir} holds no Parquet store" in err

    old = steps("a", 20)
    ParquetSeriesStore(StoreSettings().legacy_store_dir).append(old)
    code, out, _ = run_cli(["store", "migrate"], capsys)

    assert code == 0 and f"migrated {len(old)} rows" in out
    same_rows(table().rows().frame(0), old)


def test_training_as_of_version_0_reads_exactly_its_rows_after_more_appends(
    local_env: Path, tiny_model: None
) -> None:
    store = table()
    v0 = pd.concat([steps("a", 300), steps("b", 300)], ignore_index=True)
    store.append(v0)
    store.append(pd.concat([steps("a", 100, start=300), steps("b", 50, start=300)]))
    store.append(steps("a", 20, offset=100.0))  # repeats: the first stored still wins

    def at(version: int | None) -> TrainingSettings:
        train = TrainSettings(data_version=version)
        return TrainingSettings.of(Settings(store=StoreSettings(), train=train))

    old, table_read = load_table(at(0))
    new = load_data(at(None))

    assert (old.version, old.rows_read) == (0, 600)
    assert table_read.uri == str(Path(store.uri).resolve()) and table_read.sampled_since is None
    for series_id, frame in old.series.items():
        expected = v0[v0["series"] == series_id].set_index("ts")["load"]
        np.testing.assert_allclose(frame["load"].to_numpy(), expected.to_numpy(), rtol=1e-6)
    assert new.version == 2 and new.rows_read == 750  # repeats read once
    assert {name: len(frame) for name, frame in new.series.items()} == {"a": 400, "b": 350}
    np.testing.assert_allclose(new.series["a"]["load"].to_numpy()[:20], v0["load"][:20], 1e-6)


def test_a_run_on_a_table_bigger_than_its_memory_setting_says_from_when_it_read(
    local_env: Path,
    prefect_api: None,
    tiny_model: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ROLLCAST_TRAIN_MEMORY_MB", "16")  # about 350k rows at 48 bytes a row
    monkeypatch.setenv("ROLLCAST_MAX_WINDOWS", "64")
    n, origin = 200_000, pd.Timestamp("2000-01-01", tz="UTC")  # 23 years of hours: all past
    store = table()
    store.append(pd.concat([steps(s, n, origin=origin) for s in ("a", "b")], ignore_index=True))
    data, table_read = load_table(TrainingSettings.of(Settings()))
    assert table_read.sampled_since is not None and 0 < data.rows_read < 2 * n
    since = pd.Timestamp(table_read.sampled_since, unit="ms", tz="UTC")
    assert all(frame.index.min() > since for frame in data.series.values())

    code, out, _ = run_cli(["train", "--max-steps", "2"], capsys)

    assert code == 0
    trained = json.loads(out.strip().splitlines()[-1])
    run = MlflowClient(MlflowSettings().mlflow_tracking_uri).get_run(trained["run_id"])
    params = run.data.params
    assert params["data.sampled_since"] == format_timestamp(table_read.sampled_since)
    assert params["data.rows_read"] == str(data.rows_read) and params["data.version"] == "0"
    assert params["train.windows_sampled"].startswith("64 of ")
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest.startswith("v0-")


def test_a_training_run_records_the_table_version_it_read_as_its_dataset_input(
    local_env: Path,
    prefect_api: None,
    tiny_model: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ROLLCAST_MAX_WINDOWS", "50")
    store = table()
    store.append(pd.concat([steps("a", 300), steps("b", 300)], ignore_index=True))
    store.append(steps("a", 100, start=300))

    code, out, _ = run_cli(["train", "--as-of", "0", "--max-steps", "4"], capsys)

    assert code == 0
    trained = json.loads(out.strip().splitlines()[-1])
    run = MlflowClient(MlflowSettings().mlflow_tracking_uri).get_run(trained["run_id"])
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    uri = str(Path(store.uri).resolve())
    assert dataset.name == "series" and dataset.digest.startswith("v0-")
    assert dataset.source_type == "delta_table"
    assert json.loads(dataset.source) == {"path": uri, "delta_table_version": 0}
    columns = [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]]
    assert columns == ["series", "ts", "load", "temp"]
    assert json.loads(dataset.profile) == {"rows": 600}
    assert {(t.key, t.value) for t in dataset_input.tags} == {("mlflow.data.context", "training")}
    params = run.data.params
    assert params["data.version"] == "0" and params["data.rows_read"] == "600"
    assert params["data.series"] == "2" and params["data.sampled_since"] == "none"
    windows = params["train.windows_sampled"]
    assert windows.startswith("50 of ") and int(windows.split()[-1]) > 50
    assert params["data.train_windows"] == "50"
