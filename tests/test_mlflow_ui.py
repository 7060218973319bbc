"""What the MLflow UI shows of Rollcast's runs: the experiment opening on its training runs (the
tag and link the UI reads, through a real ``mlflow server``), a readable validation forecast,
and errors at each step ahead drawn as a line over the horizon."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import runs
from pipeline.config import MlflowSettings, StoreSettings
from pipeline.evaluate import score_forecaster
from pipeline.figures import HISTORY_HORIZONS, forecast_figure
from pipeline.forecast import example_history
from pipeline.model import Forecaster, build_forecaster
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.tracking import EXPERIMENT_KIND, connect, experiment_page
from pipeline.train import EvalStats, TrainResult
from pipeline.windows import WindowSet, build_window_sets

pytestmark = pytest.mark.integration

# A long lookback beside a short horizon: the shape that squeezed the forecast out of sight.
LOOKBACK, HORIZON = 240, 8
# What the UI bundle must still say for the tag and the link to open the runs (see tracking.py).
UI_READS = (
    '"mlflow.experimentKind"===e.key',
    'CUSTOM_MODEL_DEVELOPMENT="custom_model_development"',
    'MACHINE_LEARNING="machine_learning"',
    'e.get("workflowType")',
)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def _kind_over_rest(url: str, name: str) -> str | None:
    found = json.loads(_get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}"))
    tags = {tag["key"]: tag["value"] for tag in found["experiment"].get("tags", [])}
    return tags.get(EXPERIMENT_KIND[0])


def test_the_experiment_is_tagged_and_linked_as_the_served_ui_expects(
    mlflow_server: str, tmp_path: Path
) -> None:
    settings = MlflowSettings(mlflow_tracking_uri=mlflow_server, mlflow_experiment="fresh")
    fresh = connect(settings, StoreSettings(data_dir=tmp_path))
    # An experiment made before, its kind then set to GenAI in the UI's selector.
    older = MlflowSettings(mlflow_tracking_uri=mlflow_server, mlflow_experiment="older")
    client = connect(older, StoreSettings(data_dir=tmp_path)).client
    client.set_experiment_tag(client.get_experiment_by_name("older").experiment_id,
                              EXPERIMENT_KIND[0], "genai_development")  # fmt: skip

    connect(older, StoreSettings(data_dir=tmp_path))

    assert _kind_over_rest(mlflow_server, "fresh") == EXPERIMENT_KIND[1]
    assert _kind_over_rest(mlflow_server, "older") == EXPERIMENT_KIND[1]
    page = experiment_page(mlflow_server, fresh.experiment())
    assert page.endswith(f"/#/experiments/{fresh.experiment()}/runs?workflowType=machine_learning")
    index = _get(f"{mlflow_server}/")
    bundle = re.search(r'src="([^"]*static/js/main\.[0-9a-f]+\.js)"', index)
    assert bundle is not None, "the served UI has no main bundle"
    served = _get(f"{mlflow_server}/{bundle.group(1).lstrip('./')}")
    assert [text for text in UI_READS if text not in served] == []


def validation_windows() -> WindowSet:
    steps = np.arange(LOOKBACK * 3)
    series = {
        f"s{i}": pd.DataFrame({"load": np.sin(2 * np.pi * steps / 24 + i) + 10.0}) for i in range(2)
    }
    _, val = build_window_sets(series, ["load"], LOOKBACK, HORIZON, val_fraction=0.3)
    return val


def tiny_forecaster() -> Forecaster:
    config = ForecasterConfig(
        channels=("load",), lookback=LOOKBACK, horizon=HORIZON, hidden_size=8, segment_len=8
    )
    return build_forecaster(config).eval()


def test_the_validation_forecast_shows_a_few_horizons_of_history_then_the_horizon() -> None:
    figure = forecast_figure(tiny_forecaster(), validation_windows())

    for ax in figure.axes:
        left, right = ax.get_xlim()
        assert (left, right) == (1 - HISTORY_HORIZONS * HORIZON, HORIZON)
        assert ax.dataLim.x0 == 1 - HISTORY_HORIZONS * HORIZON
        assert ax.dataLim.x1 == HORIZON
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels == ["history", "actual", "forecast", "horizon"]


def test_a_training_run_logs_its_errors_at_each_step_ahead_and_its_figures_as_a_table(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = connect(MlflowSettings(mlflow_tracking_uri=uri), StoreSettings(data_dir=tmp_path))
    model, val = tiny_forecaster(), validation_windows()
    stats = EvalStats(step=1, epoch=1.0, train_loss=1.0, val_loss=1.0, val_mse=1.0,
                      seconds=0.1, learning_rate=1e-3)  # fmt: skip
    result = TrainResult(model, [stats], best_step=1, steps=1)
    card = score_forecaster(model, val, season=24)
    label = runs.RunLabel(0, "2 series")
    example = example_history(model.config)
    run = runs.TrainingRun(label, result, TrainConfig(), card, val, example, {})

    logged = runs.log_training_run(tracking, run)

    history = tracking.client.get_metric_history(logged.run_id, "val_mse_by_horizon")
    assert [point.step for point in history] == list(range(1, HORIZON + 1))
    assert [point.value for point in history] == pytest.approx(card.mse_by_horizon)
    assert np.mean([point.value for point in history]) == pytest.approx(card.mse)
    naive = tracking.client.get_metric_history(logged.run_id, "val_seasonal_naive_mse_by_horizon")
    assert len(naive) == HORIZON
    description = tracking.client.get_run(logged.run_id).data.tags["mlflow.note.content"]
    assert f"| validation MSE (scaled) | {card.mse:.4g} |" in description
