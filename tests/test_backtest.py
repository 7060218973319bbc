"""The LTSF protocol, the baselines and the backtest command (no broker, MLflow or Prefect)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flows.cli import main
from pipeline.backtest import (
    BacktestError,
    BacktestSpec,
    Borders,
    fit_scaler,
    load_ltsf_csv,
    ltsf_borders,
    ltsf_splits,
    run_backtest,
    select_features,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ETTH1 = SHARED_DATA / "ETTh1.csv"
needs_ett = pytest.mark.skipif(not ETTH1.exists(), reason=f"{ETTH1} is not there")


@needs_ett
@pytest.mark.parametrize(
    ("horizon", "windows"), [(96, 2785), (192, 2689), (336, 2545), (720, 2161)]
)
def test_ett_test_split_has_every_stride_one_window(horizon: int, windows: int) -> None:
    values = load_ltsf_csv(ETTH1).to_numpy(np.float32)
    borders = ltsf_borders(len(values), "ETTh1")

    splits = ltsf_splits(values, borders, lookback=336, horizon=horizon)

    assert len(splits.test) == windows == 2881 - horizon
    assert len(splits.val) == windows
    first_target = splits.test.starts[0] + 336
    last_target = splits.test.starts[-1] + 336 + horizon - 1
    assert (first_target, last_target) == (11520, 14399)


def test_borders_are_fixed_for_ett_and_70_10_20_otherwise() -> None:
    assert ltsf_borders(17420, "ETTh2") == Borders(8640, 11520, 14400, published=True)
    assert ltsf_borders(69680, "ETTm1") == Borders(34560, 46080, 57600, published=True)
    assert ltsf_borders(1000, "sales") == Borders(700, 800, 1000)


def test_validation_folds_take_the_validation_rows_from_the_latest_rows_before_the_test() -> None:
    values = np.arange(1000, dtype=np.float32)[:, None]
    borders = ltsf_borders(1000, "sales")  # 700 / 800 / 1000

    one = ltsf_splits(values, borders, lookback=24, horizon=10)
    four = ltsf_splits(values, borders, lookback=24, horizon=10, folds=4)

    held_out = np.unique(four.val.targets)
    assert len(held_out) == len(np.unique(one.val.targets)) == 100
    assert held_out.max() == 799 and held_out.min() >= 400
    assert not np.isin(four.train.targets, held_out).any()
    assert four.train.targets.max() < 800  # nothing of the test is trained on
    assert np.array_equal(four.test.starts, one.test.starts)


@pytest.mark.parametrize(("dataset", "blocks"), [("ETTh1", 1), ("sales", 4)])
def test_published_borders_keep_one_validation_block(dataset: str, blocks: int) -> None:
    frame = small_frame(2000)
    spec = BacktestSpec(model="dlinear", lookback=24, horizon=8, train_overrides={"max_steps": 2})
    if dataset == "ETTh1":
        frame = small_frame(17420)

    metrics = run_backtest(frame, dataset, spec).metrics

    assert metrics["val_blocks"] == blocks
    assert np.isfinite(metrics["val_mse"])


def test_scaler_is_fit_on_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 2.0, size=(1000, 3))
    shifted = values.copy()
    shifted[700:] += 100.0  # validation and test rows far away

    scaler, shifted_scaler = fit_scaler(values, 700), fit_scaler(shifted, 700)

    np.testing.assert_array_equal(scaler.mean, shifted_scaler.mean)
    np.testing.assert_array_equal(scaler.std, shifted_scaler.std)
    train = scaler.transform(values[:700])
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)


def small_frame(rows: int = 100) -> pd.DataFrame:
    t = np.arange(rows, dtype=np.float64)
    return pd.DataFrame({"HUFL": np.sin(t / 3) * 4 + t / 10, "OT": np.cos(t / 5) + t / 20})


def test_repeat_last_reproduces_the_last_scaled_value_exactly() -> None:
    frame = small_frame()
    spec = BacktestSpec(features="M", lookback=4, horizon=2, model="repeat_last")

    result = run_backtest(frame, "slice", spec)

    raw = frame.to_numpy()
    scaled = (raw - raw[:70].mean(axis=0)) / raw[:70].std(axis=0)  # by hand
    test_starts = range(80 - 4, 100 - 4 - 2 + 1)  # targets in rows 80..99
    expected = np.stack([np.repeat(scaled[s + 3][None], 2, axis=0) for s in test_starts])
    targets = np.stack([scaled[s + 4 : s + 6] for s in test_starts])
    np.testing.assert_allclose(result.predictions, expected, rtol=1e-5, atol=1e-6)
    assert result.metrics["mse"] == pytest.approx(np.mean((expected - targets) ** 2), rel=1e-5)
    assert result.metrics["windows"] == 19


def test_s_setting_keeps_the_target_column_only() -> None:
    assert list(select_features(small_frame(), "S").columns) == ["OT"]
    with pytest.raises(BacktestError, match="target column"):
        select_features(small_frame(), "S", target="missing")


def test_unknown_model_is_refused_with_the_choices() -> None:
    with pytest.raises(BacktestError, match="repeat_last"):
        run_backtest(small_frame(), "slice", BacktestSpec(model="prophet", lookback=4, horizon=2))


def seasonal_random_walk(rows: int, seed: int) -> pd.DataFrame:
    """Daily seasonality on a wandering level: the level seen in test was never seen in training."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    columns = {}
    for c in range(2):
        level = np.cumsum(rng.normal(0, 0.3, rows))
        columns[f"c{c}"] = (
            level + 3 * np.sin(2 * np.pi * (t / 24 + c / 4)) + rng.normal(0, 0.1, rows)
        )
    return pd.DataFrame(columns)


def test_short_lstm_run_beats_dlinear_on_a_seasonal_signal() -> None:
    torch.set_num_threads(2)
    frame = seasonal_random_walk(1500, seed=1)
    common = {"features": "M", "lookback": 96, "horizon": 24, "seed": 0}
    lstm = BacktestSpec(
        model="lstm",
        model_overrides={"hidden_size": 32, "segment_len": 24, "dropout": 0.0},
        train_overrides={"max_steps": 120, "batch_size": 64, "learning_rate": 3e-3},
        **common,
    )
    dlinear = BacktestSpec(model="dlinear", train_overrides={"max_epochs": 6}, **common)

    lstm_mse = run_backtest(frame, "synthetic", lstm).metrics["mse"]
    dlinear_mse = run_backtest(frame, "synthetic", dlinear).metrics["mse"]

    assert lstm_mse < dlinear_mse


def test_backtest_command_writes_predictions_and_metrics(tmp_path: Path) -> None:
    csv = tmp_path / "sales.csv"
    dates = pd.date_range("2024-01-01", periods=200, freq="h")
    small_frame(200).assign(date=dates).to_csv(csv, index=False)
    out = tmp_path / "out"

    options = ["--model", "dlinear", "--lookback", "24", "--horizon", "8", "--max-steps", "3"]
    code = main(["backtest", "--data", str(csv), *options, "--out", str(out)])

    predictions = np.load(out / "predictions.npy")
    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0
    assert predictions.shape == (40 - 8 + 1, 8, 2)  # test targets: the last 20 % of 200 rows
    for key in ("mse", "mae", "lookback", "horizon", "features", "model_config", "steps"):
        assert key in metrics
    assert metrics["wall_s"] > 0 and metrics["device"] == "cpu"
    intervals = np.load(out / "intervals.npz")
    assert intervals["levels"].tolist() == [0.8, 0.95]
    assert intervals["lo"].shape == intervals["hi"].shape == (2, *predictions.shape)
    assert (intervals["lo"] <= predictions).all() and (predictions <= intervals["hi"]).all()
    for key in ("coverage.0.8", "width.0.95", "winkler.0.8", "pinball", "coverage.0.95.offline"):
        assert np.isfinite(metrics[key]), key


def test_intervals_cover_the_test_split_at_their_levels_online_and_offline() -> None:
    # Seasonal-naive on a daily cycle in white noise: its errors are as wide in test as in
    # validation, so both the split-conformal and the adapted bands hold their levels.
    rng, t = np.random.default_rng(3), np.arange(6000)
    frame = pd.DataFrame({"x": np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, len(t))})
    spec = BacktestSpec(model="seasonal_naive", lookback=96, horizon=24, levels=(0.8, 0.95))

    result = run_backtest(frame, "synthetic", spec)

    metrics = result.metrics
    for level in ("0.8", "0.95"):
        nominal = float(level)
        assert metrics[f"coverage.{level}"] == pytest.approx(nominal, abs=0.03)
        assert metrics[f"coverage.{level}.offline"] == pytest.approx(nominal, abs=0.03)
    assert metrics["width.0.95"] > metrics["width.0.8"] > 0
    assert result.intervals is not None and result.intervals.lo.shape[:2] == (2, 1177)


@pytest.mark.parametrize(
    "change", [{"levels": (1.2,)}, {"levels": ()}, {"interval_gain": -0.1}], ids=str
)
def test_interval_settings_out_of_range_are_refused(change: dict) -> None:
    with pytest.raises(BacktestError, match="interval"):
        run_backtest(small_frame(), "slice", replace(BacktestSpec(lookback=4, horizon=2), **change))


def test_backtest_is_logged_to_mlflow_when_a_tracking_uri_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("ROLLCAST_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("ROLLCAST_DATA_DIR", str(tmp_path / "data"))
    csv = tmp_path / "sales.csv"
    dates = pd.date_range("2024-01-01", periods=200, freq="h")
    small_frame(200).assign(date=dates).to_csv(csv, index=False)
    options = ["--model", "repeat_last", "--lookback", "24", "--horizon", "8"]

    assert main(["backtest", "--data", str(csv), *options, "--out", str(tmp_path / "o")]) == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rollcast")
    (run,) = client.search_runs([experiment.experiment_id])
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert run.data.metrics["mse"] == pytest.approx(metrics["mse"])
    assert run.data.params["model"] == "repeat_last"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "backtest")}
    assert files == {"backtest/metrics.json", "backtest/predictions.npy", "backtest/intervals.npz"}


@pytest.mark.parametrize(("freq", "season"), [("h", 24), ("30min", 48), ("D", 7)])
def test_seasonal_naive_takes_its_period_from_the_data(freq: str, season: int) -> None:
    dates = pd.date_range("2024-01-01", periods=400, freq=freq)
    frame = pd.DataFrame({"date": dates, "OT": np.arange(400) % season * 1.0})

    result = run_backtest(
        frame, "custom", BacktestSpec("S", lookback=96, horizon=8, model="seasonal_naive")
    )

    assert result.metrics["season"] == result.metrics["model_config"]["season"] == season
    assert result.metrics["season_name"] == ("week" if freq == "D" else "day")
    assert result.metrics["mse"] == pytest.approx(0.0, abs=1e-12)  # the pattern repeats exactly


# --- missing values ------------------------------------------------------------------------------


def co2_frame() -> pd.DataFrame:
    """Mauna Loa CO2, weekly from 1958: 59 weeks missing, the longest run 18 weeks."""
    co2 = pytest.importorskip("statsmodels.datasets.co2")
    data = co2.load_pandas().data
    return pd.DataFrame({"date": data.index, "OT": data["co2"].to_numpy()})


GAP_MODELS = {
    "lstm": {
        "model_overrides": {"hidden_size": 8, "segment_len": 8},
        "train_overrides": {"max_steps": 5, "batch_size": 32},
    },
    "dlinear": {"train_overrides": {"max_steps": 5, "max_epochs": 1}},
    "seasonal_naive": {},
    "repeat_last": {},
}


@pytest.mark.parametrize("model", list(GAP_MODELS))
def test_a_csv_with_missing_weeks_backtests_with_finite_metrics(model: str) -> None:
    torch.set_num_threads(2)
    spec = BacktestSpec("S", lookback=64, horizon=8, model=model, **GAP_MODELS[model])

    result = run_backtest(co2_frame(), "co2", spec)

    metrics = result.metrics
    assert np.isfinite(metrics["mse"]) and np.isfinite(metrics["mae"])
    assert np.isfinite(result.predictions).all() and len(result.predictions) > 0
    assert metrics["missing_cells"] == 59
    assert metrics["interpolated_cells"] == 24  # the runs of up to 3 weeks
    assert sum(metrics["windows_dropped_by_split"].values()) > 0  # the 18-week run and others
    assert metrics["windows"] == len(result.predictions)


def test_every_model_is_scored_on_the_same_windows_around_gaps() -> None:
    frame, common = co2_frame(), {"lookback": 64, "horizon": 8}

    naive = run_backtest(frame, "co2", BacktestSpec("S", model="repeat_last", **common))
    seasonal = run_backtest(frame, "co2", BacktestSpec("S", model="seasonal_naive", **common))

    np.testing.assert_array_equal(naive.first_targets, seasonal.first_targets)
    assert seasonal.metrics["season_name"] == "year" and seasonal.metrics["season"] == 52
    dropped = naive.metrics["windows_dropped_by_split"]
    assert naive.metrics["windows_dropped_for_gaps"] == dropped["test"]


def test_short_gaps_are_interpolated_linearly_and_counted() -> None:
    frame = small_frame()
    frame.loc[[10, 11, 12], "OT"] = np.nan  # 3 steps: filled
    full = run_backtest(
        small_frame(), "slice", BacktestSpec(lookback=4, horizon=2, model="repeat_last")
    )

    result = run_backtest(frame, "slice", BacktestSpec(lookback=4, horizon=2, model="repeat_last"))

    assert result.metrics["interpolated_cells"] == 3 and result.metrics["missing_cells"] == 3
    assert result.metrics["windows"] == full.metrics["windows"]
    assert result.metrics["windows_dropped_by_split"] == {"train": 0, "val": 0, "test": 0}


def test_a_file_whose_windows_all_touch_a_long_gap_is_refused_naming_it() -> None:
    frame = small_frame()
    frame.loc[frame.index % 5 == 0, "OT"] = np.nan  # fine
    frame.loc[80:99, "OT"] = np.nan  # the whole test part: 20 steps

    for model in ("repeat_last", "seasonal_naive", "lstm"):
        spec = BacktestSpec(lookback=4, horizon=2, model=model, season=2)
        with pytest.raises(BacktestError, match="20 steps of 'OT' from row 80"):
            run_backtest(frame, "slice", spec)


def test_a_channel_with_no_training_value_is_refused() -> None:
    frame = small_frame()
    frame.loc[:69, "OT"] = np.nan

    with pytest.raises(BacktestError, match=r"columns \['OT'\] have no value"):
        run_backtest(frame, "slice", BacktestSpec(lookback=4, horizon=2, model="repeat_last"))


def test_the_scaler_ignores_missing_cells() -> None:
    values = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, np.nan], [100.0, 100.0]])

    scaler = fit_scaler(values, train_end=3)

    np.testing.assert_allclose(scaler.mean, [2.0, 3.0])
    np.testing.assert_allclose(scaler.std, [1.0, 1.0])


# --- seed ensembles ------------------------------------------------------------------------------

TINY_DLINEAR = {"model": "dlinear", "lookback": 24, "horizon": 8}
TINY_TRAINING = {"max_steps": 4, "max_epochs": 1}


def test_an_ensemble_forecasts_the_mean_of_its_seeds() -> None:
    torch.set_num_threads(2)
    frame = seasonal_random_walk(600, seed=2)

    runs = [
        run_backtest(
            frame,
            "synthetic",
            BacktestSpec(seed=seed, train_overrides=TINY_TRAINING, **TINY_DLINEAR),
        )
        for seed in (5, 6)
    ]
    ensemble = run_backtest(
        frame,
        "synthetic",
        BacktestSpec(seed=5, ensemble=2, train_overrides=TINY_TRAINING, **TINY_DLINEAR),
    )

    mean = (runs[0].predictions + runs[1].predictions) / 2
    np.testing.assert_allclose(ensemble.predictions, mean, rtol=1e-5, atol=1e-6)
    assert ensemble.metrics["ensemble"] == 2 and ensemble.metrics["ensemble_seeds"] == [5, 6]
    assert ensemble.metrics["mse_first_seed"] == pytest.approx(runs[0].metrics["mse"], rel=1e-5)
    assert runs[0].metrics["ensemble"] == 1 and "val_mse_single" not in runs[0].metrics


def test_auto_ensemble_is_used_only_where_it_wins_on_validation() -> None:
    torch.set_num_threads(2)
    spec = BacktestSpec(ensemble="auto", train_overrides=TINY_TRAINING, **TINY_DLINEAR)

    metrics = run_backtest(seasonal_random_walk(600, seed=2), "synthetic", spec).metrics

    wins = metrics["val_mse_ensemble"] < metrics["val_mse_single"]
    assert metrics["ensemble"] == (3 if wins else 1)
    assert metrics["ensemble_requested"] == "auto"


def test_an_ensemble_of_no_seed_is_refused() -> None:
    with pytest.raises(BacktestError, match="ensemble must be"):
        run_backtest(small_frame(), "slice", BacktestSpec(lookback=4, horizon=2, ensemble=0))


def test_backtest_command_takes_an_ensemble(tmp_path: Path) -> None:
    csv = tmp_path / "sales.csv"
    dates = pd.date_range("2024-01-01", periods=200, freq="h")
    small_frame(200).assign(date=dates).to_csv(csv, index=False)
    out = tmp_path / "out"
    options = ["--model", "dlinear", "--lookback", "24", "--horizon", "8", "--max-steps", "2"]

    code = main(["backtest", "--data", str(csv), *options, "--ensemble", "2", "--out", str(out)])

    metrics = json.loads((out / "metrics.json").read_text())
    assert code == 0 and metrics["ensemble"] == 2 and metrics["lookback"] == 24
    assert np.load(out / "predictions.npy").shape == (33, 8, 2)
    assert main(["backtest", "--data", str(csv), "--ensemble", "none", "--out", str(out)]) != 0


def weekly_frame(weeks: int = 8) -> pd.DataFrame:
    """Hourly rows whose weekends run at half the weekdays' daily profile: a week of steps
    forecasts them better than a day."""
    dates = pd.date_range("2024-01-01", periods=weeks * 7 * 24, freq="h")
    load = np.where(dates.dayofweek < 5, 1.0, 0.5) * (2 + np.sin(2 * np.pi * dates.hour / 24))
    return pd.DataFrame({"date": dates, "OT": load})


def season_spec(season: int | None = None) -> BacktestSpec:
    """A two-step LSTM backtest whose network forecasts the residual over seasonal-naive."""
    return BacktestSpec(
        "S",
        lookback=192,
        horizon=24,
        split="val",
        season=season,
        model_overrides={"norm": "season", "hidden_size": 8, "segment_len": 24},
        train_overrides={"max_steps": 2},
    )


def test_a_norm_season_lstm_backtests_with_the_season_chosen_from_the_data() -> None:
    metrics = run_backtest(weekly_frame(), "weekly", season_spec()).metrics

    assert metrics["model_config"]["season"] == metrics["season"] == 168
    assert metrics["season_name"] == "week"


def test_a_norm_season_lstm_refuses_a_season_longer_than_the_lookback() -> None:
    with pytest.raises(BacktestError, match="season 336 is longer than the lookback 192"):
        run_backtest(weekly_frame(), "weekly", season_spec(season=336))


def test_norm_auto_keeps_the_norm_that_validates_better() -> None:
    # A weekly pattern repeating exactly: the residual over seasonal-naive is zero, so with the
    # output head near zero after two steps, "season" validates far better than "last".
    spec = replace(season_spec(), model_overrides={**season_spec().model_overrides, "norm": "auto"})
    metrics = run_backtest(weekly_frame(), "weekly", spec).metrics

    scores = metrics["norm_val_mse"]
    assert set(scores) == {"last", "season"}
    assert metrics["model_config"]["norm"] == min(scores, key=scores.get) == "season"
    assert metrics["model_config"]["season"] == 168
    assert metrics["val_mse"] == pytest.approx(scores["season"])


def test_an_ms_backtest_scores_the_target_alone() -> None:
    # Two columns in, OT out: the other column (ten times larger) must not enter the score.
    rng, t = np.random.default_rng(4), np.arange(600)
    frame = pd.DataFrame(
        {"x": 10 * rng.normal(size=len(t)), "OT": np.sin(t / 7) + 0.1 * rng.normal(size=len(t))}
    )
    spec = BacktestSpec(features="MS", target="OT", model="repeat_last", lookback=24, horizon=6)

    result = run_backtest(frame, "synthetic", spec)

    assert result.predictions.shape[-1] == result.targets.shape[-1] == 1
    ot = result.targets[..., 0]  # scaled OT of each test window
    last = np.repeat(result.predictions[:, :1, 0], 6, axis=1)  # repeat-last is flat
    assert result.metrics["mse"] == pytest.approx(float(np.mean((ot - last) ** 2)), rel=1e-6)
    assert result.intervals is not None and result.intervals.lo.shape[-1] == 1


def test_a_quantile_head_narrows_the_intervals_where_the_noise_is_low() -> None:
    # Noise ten times louder in the first half of each day than in the second. A window's
    # spread is the same whatever its hour, so intervals around a point are as wide at night
    # as by day; the quantile head learns the hour's noise from the cycle's phase.
    rng, t = np.random.default_rng(0), np.arange(4000)
    noise = np.where(t % 24 < 12, 0.5, 0.05) * rng.normal(size=len(t))
    frame = pd.DataFrame({"x": np.sin(2 * np.pi * t / 24) + noise})
    common = {
        "lookback": 48,
        "horizon": 12,
        "levels": (0.8,),
        "train_overrides": {"max_steps": 300, "batch_size": 64, "learning_rate": 3e-3},
    }
    shape = {"hidden_size": 32, "segment_len": 12, "dropout": 0.0, "norm": "last"}

    point = run_backtest(frame, "noisy", BacktestSpec(model_overrides=shape, **common))
    quantiles = run_backtest(
        frame, "noisy", BacktestSpec(model_overrides={**shape, "loss": "pinball"}, **common)
    )

    assert quantiles.metrics["coverage.0.8"] == pytest.approx(0.8, abs=0.05)
    assert quantiles.metrics["winkler.0.8"] < 0.9 * point.metrics["winkler.0.8"]  # 0.78 measured
    assert quantiles.intervals is not None
    lo, hi = quantiles.intervals.lo, quantiles.intervals.hi
    assert (lo <= quantiles.predictions).all() and (quantiles.predictions <= hi).all()
