"""`rollcast tune` end to end: a real Prefect API (the harness), a real MLflow store and the
series store; a 2-trial search logs a parent run with one child run per trial, writes the best
config, and the train flow trains with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flows.train import train_flow
from flows.tune import tune_flow
from pipeline.config import KafkaSettings, MlflowSettings, StoreSettings
from pipeline.wiring import open_store

pytestmark = pytest.mark.integration

STEPS = 300


@pytest.fixture
def small_search(rollcast_env: KafkaSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two daily-cycle series in the store; a short lookback and a few steps per trial."""
    for name, value in {
        "ROLLCAST_LOOKBACK": "48",
        "ROLLCAST_HORIZON": "12",
        "ROLLCAST_MAX_STEPS": "6",
        "ROLLCAST_EVAL_EVERY": "3",
        "ROLLCAST_PROMOTION_GATE": "false",
    }.items():
        monkeypatch.setenv(name, value)
    stamps = pd.date_range("2024-01-01", periods=STEPS, freq="1h", tz="UTC")
    daily = np.sin(2 * np.pi * np.arange(STEPS) / 24)
    frames = [
        pd.DataFrame({"series": f"s{i}", "ts": stamps, "load": 10 * i + 3 * daily})
        for i in range(2)
    ]
    open_store(StoreSettings()).append(pd.concat(frames, ignore_index=True))


def test_a_two_trial_search_logs_child_runs_and_its_best_config_trains(
    small_search: None, prefect_api: None
) -> None:
    tuned = tune_flow(trials=2)

    client = MlflowClient(MlflowSettings().mlflow_tracking_uri)
    parent = client.get_run(tuned["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tuned['run_id']}'"
    )
    assert tuned["trials"] == 2 and len(children) == 2
    for child in children:
        assert {
            "lookback",
            "hidden_size",
            "num_layers",
            "segment_len",
            "loss",
            "learning_rate",
        } <= set(child.data.params)
        assert child.data.tags["rollcast.trial_state"] in ("complete", "pruned")
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_mse")]
    finals = [c.data.metrics["final_val_mse"] for c in children]
    assert parent.data.metrics["best_val_mse"] == pytest.approx(min(finals))
    artifacts = {a.path for a in client.list_artifacts(tuned["run_id"])}
    assert "tuned_config.json" in artifacts

    written = json.loads(Path(tuned["tuned_config"]).read_text())
    assert written["model_settings"] == {
        k: v for k, v in tuned["best"].items() if k in written["model_settings"]
    }
    trained = train_flow(tuned_config=tuned["tuned_config"])

    params = client.get_run(str(trained["run_id"])).data.params
    for name, value in {**written["model_settings"], **written["train_settings"]}.items():
        prefix = "model" if name in written["model_settings"] else "train"
        assert params[f"{prefix}.{name}"] == str(value)


def test_the_train_flow_searches_first_when_asked(
    small_search: None, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLCAST_TUNE_TRIALS", "2")

    trained = train_flow()

    client = MlflowClient(MlflowSettings().mlflow_tracking_uri)
    run = client.get_run(str(trained["run_id"]))
    searches = client.search_runs([run.info.experiment_id], "tags.`rollcast.kind` = 'search'")
    assert len(searches) == 1
    best = {
        k.removeprefix("best."): v
        for k, v in searches[0].data.params.items()
        if k.startswith("best.")
    }
    assert run.data.params["model.hidden_size"] == best["hidden_size"]
    assert run.data.params["train.learning_rate"] == best["learning_rate"]
    assert (StoreSettings().data_dir / "tuned.json").exists()


def test_a_capped_candidate_stops_at_once_and_the_defaults_stay_best(
    small_search: None, prefect_api: None
) -> None:
    # A cap no candidate can meet: the second trial stops at the starting weights' validation.
    tuned = tune_flow(trials=2, trial_timeout_s=1e-9)

    client = MlflowClient(MlflowSettings().mlflow_tracking_uri)
    children = client.search_runs(
        [client.get_run(tuned["run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{tuned['run_id']}'",
        order_by=["attributes.start_time ASC"],
    )
    states = [child.data.tags["rollcast.trial_state"] for child in children]
    assert states == ["complete", "capped"]
    capped = client.get_metric_history(children[1].info.run_id, "val_mse")
    assert [m.step for m in capped] == [0]  # no optimizer step was taken past the cap
    assert tuned["best"]["lookback"] == 48  # the defaults (ROLLCAST_LOOKBACK) won
