"""MLflow: runs, plots, model logging, registration, the champion alias, and safe loading.

The logged model is a pyfunc whose ``load_context`` rebuilds the network from a checkpoint
(loaded with ``weights_only=True``) and whose ``predict`` hands a frame of recent observations
to :mod:`pipeline.forecast`. Promotion moves the ``champion`` alias; files are never copied.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient

from pipeline import ConfigurationError, RollcastError
from pipeline.config import MlflowSettings, StoreSettings
from pipeline.evaluate import Scorecard
from pipeline.forecast import LoadedForecaster, example_history, forecast_frame, predict
from pipeline.model import Forecaster, load_checkpoint, save_checkpoint
from pipeline.train import TrainConfig, TrainResult
from pipeline.windows import WindowSet

if TYPE_CHECKING:  # Optuna is loaded by the search alone, not by serve
    from pipeline.tuning import SearchResult, TrialRecord

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
CHECKPOINT_FILE = "forecaster.pt"
MODEL_ARTIFACT_PATH = "model"
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
# MLflow 3's UI opens an experiment without this tag on its GenAI pages, not on the runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# Serve's MSE of published forecasts, in the units of the training run's val_mse.
ONLINE_MSE = "online_mse"
ONLINE_VALUES = "online_values"  # forecast values (steps ahead x channels) behind it
# A registered model's data contract: {"channels": [...], "freq": "1h"}.
CONTRACT_TAG = "rollcast.data_contract"
# Validation windows drawn in the forecast-vs-actual plot.
PLOTTED_WINDOWS = 4


class RegistryError(RollcastError):
    """The registry has no usable model, or MLflow refused an operation."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be asked: a server down, a locked or missing store.

    Not the same as "no champion": nothing may be concluded about the models in it.
    """


# What MLflow answers when a model or alias does not exist, as opposed to failing to answer.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def configure(mlflow_settings: MlflowSettings, store: StoreSettings) -> str:
    """Point MLflow at the tracking URI and make sure the experiment exists; return its id."""
    uri = mlflow_settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    try:
        return _experiment_id(mlflow_settings, store, uri)
    except MlflowException as err:
        raise RegistryUnavailableError(f"cannot reach MLflow at {uri}: {err}") from err


def connect_reader(mlflow_settings: MlflowSettings) -> None:
    """Point MLflow at the registry to read models from, creating nothing.

    A sqlite store that does not exist is an error here: serve must not create an empty one
    and conclude there is no champion.
    """
    uri = mlflow_settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise RegistryUnavailableError(f"the MLflow store {uri} does not exist")
    mlflow.set_tracking_uri(uri)


def _experiment_id(mlflow_settings: MlflowSettings, store: StoreSettings, uri: str) -> str:
    experiment = mlflow.get_experiment_by_name(mlflow_settings.mlflow_experiment)
    if experiment is None:
        # A local store gets its artifacts beside the data; a server decides for itself.
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        location = (store.data_dir / "mlartifacts").resolve().as_uri() if local else None
        experiment_id = mlflow.create_experiment(mlflow_settings.mlflow_experiment, location)
    else:
        experiment_id = experiment.experiment_id
    if experiment is None or EXPERIMENT_KIND[0] not in experiment.tags:
        MlflowClient().set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


class ForecasterPyfunc(PythonModel):
    """Recent observations in (``series``, ``ts``, channels), forecasts out (plus ``step``).

    A thin shell over :func:`pipeline.forecast.forecast_frame`, the inference the serve loop
    uses too. ``ts`` is ISO-8601 text in and out, as on the wire (MLflow schemas hold no time
    zones).
    """

    def load_context(self, context: Any) -> None:
        self.model = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return forecast_frame(self.model, model_input)


@dataclass(frozen=True)
class LoggedVersion:
    run_id: str
    version: str


@dataclass(frozen=True)
class RunLabel:
    """What the MLflow UI shows of a training run before it is opened."""

    started_ms: int  # when training began, so the run's duration is the training's
    data: str  # e.g. "8 series 1h to 2016-07-11"


def log_training_run(
    settings: MlflowSettings,
    result: TrainResult,
    train_config: TrainConfig,
    card: Scorecard,
    val: WindowSet,
    example: pd.DataFrame,
    data_params: dict[str, Any],
    label: RunLabel,
) -> LoggedVersion:
    """Log params, the losses at each validation, metrics, plots and the model; register it.

    The run is named after the flow, the data and the version it registered.
    """
    name = f"train {settings.model_name}: {label.data}"
    with _run_since(settings, label.started_ms, name) as run:
        mlflow.log_params(_params(result.model, train_config, data_params))
        for stats in result.history:
            mlflow.log_metrics(
                {
                    "train_loss": stats.train_loss,
                    "val_loss": stats.val_loss,
                    "learning_rate": stats.learning_rate,
                },
                step=stats.step,
            )
        mlflow.log_metrics(
            {
                **card.as_metrics(),
                "best_step": result.best_step,
                "steps": result.steps,
                "train_seconds": sum(stats.seconds for stats in result.history),
                "samples_per_s": result.samples_per_s,
            }
        )
        mlflow.log_figure(loss_figure(result), "plots/loss.png")
        mlflow.log_figure(forecast_figure(result.model, val), "plots/validation_forecast.png")
        version = _log_model(settings, result.model, example)
        MlflowClient().update_run(run.info.run_id, name=f"{name}, v{version}")
    logger.info(
        "logged run %s, registered %s version %s", run.info.run_id, settings.model_name, version
    )
    return LoggedVersion(run.info.run_id, version)


def _run_since(settings: MlflowSettings, started_ms: int, name: str) -> Any:
    """An active run that began at ``started_ms``; ``mlflow.start_run`` can only begin now."""
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    experiment_id = experiment.experiment_id if experiment else "0"
    created = MlflowClient().create_run(experiment_id, start_time=started_ms, run_name=name)
    return mlflow.start_run(run_id=created.info.run_id)


@contextmanager
def search_run(name: str, params: dict[str, Any]) -> Iterator[str]:
    """The parent run of a search; yields its id. Trials are logged as its children."""
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tag("rollcast.kind", "search")
        mlflow.log_params(params)
        yield run.info.run_id


def log_trial(record: TrialRecord) -> None:
    """One trial as a child run of the active search run: its candidate, curve and outcome."""
    with mlflow.start_run(run_name=f"trial-{record.number}", nested=True):
        mlflow.log_params(record.candidate.as_params())
        mlflow.set_tag("rollcast.trial_state", record.state)
        for stats in record.history:
            mlflow.log_metric("val_mse", stats.val_mse, step=stats.step)
        mlflow.log_metrics({"final_val_mse": record.val_mse, "seconds": record.seconds})


def log_search_result(result: SearchResult, tuned: dict[str, Any]) -> None:
    """The best trial on the active search run, and the reusable config as an artifact."""
    mlflow.log_params({f"best.{k}": v for k, v in result.best.candidate.as_params().items()})
    mlflow.log_metrics(
        {
            "best_val_mse": result.best.val_mse,
            "trials": len(result.trials),
            "pruned_trials": result.pruned,
        }
    )
    mlflow.log_dict(tuned, "tuned_config.json")
    mlflow.log_figure(search_figure(result), "plots/search.png")


def search_figure(result: SearchResult) -> plt.Figure:
    """Each trial's validation MSE in order, pruned trials hollow, the best one marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for record in (r for r in result.trials if np.isfinite(r.val_mse)):
        filled = record.state == "complete"
        ax.scatter(
            record.number,
            record.val_mse,
            facecolors="C0" if filled else "none",
            edgecolors="C0",
        )
    ax.scatter(result.best.number, result.best.val_mse, color="C3", marker="*", s=150)
    ax.set(xlabel="trial", ylabel="validation MSE", yscale="log", title="Search (hollow: pruned)")
    fig.tight_layout()
    return fig


def register_checkpoint(settings: MlflowSettings, model: Forecaster, source: str) -> str:
    """Register a forecaster trained elsewhere (a GPU machine, a notebook) as a new version.

    The run holds the model config as params and ``source`` as a tag; no alias moves.
    """
    with mlflow.start_run(run_name=f"register-{settings.model_name}"):
        mlflow.log_params({f"model.{k}": v for k, v in model.config.to_dict().items()})
        mlflow.set_tag("rollcast.source", source)
        version = _log_model(settings, model, example_history(model.config))
    logger.info("registered %s from %s as version %s", settings.model_name, source, version)
    return version


def _params(model: Forecaster, train_config: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    model_params = {f"model.{k}": v for k, v in model.config.to_dict().items()}
    train_params = {f"train.{k}": v for k, v in asdict(train_config).items()}
    return {**model_params, **train_params, **{f"data.{k}": v for k, v in data.items()}}


def _log_model(settings: MlflowSettings, model: Forecaster, example: pd.DataFrame) -> str:
    model = model.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / CHECKPOINT_FILE)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=str(PYFUNC_ENTRY),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
            signature=infer_signature(example, forecast_frame(model, example)),
            input_example=example,
            registered_model_name=settings.model_name,
            # Listing them avoids MLflow's slow import-capturing subprocess.
            pip_requirements=_pip_requirements(),
        )
    return str(info.registered_model_version)


def _pip_requirements() -> list[str]:
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]


def loss_figure(result: TrainResult) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [s.step for s in result.history]
    ax.plot(steps, [s.train_loss for s in result.history], label="train")
    ax.plot(steps, [s.val_loss for s in result.history], label="validation")
    ax.axvline(result.best_step, color="grey", linestyle=":", label="best validation")
    ax.set(xlabel="optimizer step", ylabel="loss (scaled)", yscale="log", title="Training loss")
    ax.legend()
    fig.tight_layout()
    return fig


def forecast_figure(model: Forecaster, val: WindowSet) -> plt.Figure:
    """Forecast vs actual for a few validation windows, first channel, in the data's units."""
    picks = np.linspace(0, len(val) - 1, num=min(PLOTTED_WINDOWS, len(val))).astype(int)
    shown = val.subset(picks)
    preds = predict(model.cpu(), shown.inputs)
    lookback, horizon = val.lookback, val.horizon
    fig, axes = plt.subplots(len(picks), 1, figsize=(8, 2.2 * len(picks)), squeeze=False)
    for ax, i, pred in zip(axes[:, 0], range(len(picks)), preds, strict=True):
        ax.plot(range(lookback), shown.inputs[i, :, 0], color="black", label="history")
        future = range(lookback, lookback + horizon)
        ax.plot(future, shown.targets[i, :, 0], color="black", linestyle="--", label="actual")
        ax.plot(future, pred[:, 0], color="tab:orange", label="forecast")
        ax.set_title(f"{shown.series[i]} — {model.config.channels[0]}", fontsize=9)
    axes[-1, 0].set_xlabel(f"step ({model.config.freq})")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def log_backtest(metrics: dict[str, Any], out_dir: Path) -> str:
    """One MLflow run per backtest: its settings as params, its errors as metrics, its files."""
    parts = (metrics["dataset"], metrics["model"], metrics["features"], f"H{metrics['horizon']}")
    name = "backtest-" + "-".join(map(str, parts))
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    params = {k: v for k, v in metrics.items() if k not in numeric and not isinstance(v, dict)}
    for section in ("model_config", "train_config"):
        params.update({f"{section}.{k}": v for k, v in dict(metrics.get(section, {})).items()})
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(numeric)
        mlflow.log_artifacts(str(out_dir), artifact_path="backtest")
    return str(run.info.run_id)


def champion_version(settings: MlflowSettings) -> str | None:
    """The version the champion alias points at; None if there is no champion yet.

    Raises :class:`RegistryUnavailableError` when the registry cannot answer.
    """
    try:
        found = MlflowClient().get_model_version_by_alias(
            settings.model_name, settings.champion_alias
        )
    except MlflowException as err:
        if err.error_code in NOT_FOUND_CODES:
            return None
        raise RegistryUnavailableError(f"cannot read the champion alias: {err}") from err
    except Exception as err:  # a store's own driver error (sqlite locked), a network error
        raise RegistryUnavailableError(f"cannot read the champion alias: {err!r}") from err
    return str(found.version)


@dataclass(frozen=True)
class DataContract:
    """What a registered model forecasts: its channels, in order, and its step."""

    channels: tuple[str, ...]
    freq: str

    def describe(self) -> str:
        return f"channels {list(self.channels)[:8]} every {self.freq}"


class ContractError(RegistryError, ConfigurationError):
    """A model cannot replace a registered model of another data contract."""


def require_contract(settings: MlflowSettings, contract: DataContract) -> None:
    """Refuse a challenger that could not replace the registered model; record a new model's.

    One registered model per data contract: the first training creates the model with its
    contract (a tag), and a version of other channels or another step never takes its alias.
    """
    client = MlflowClient()
    try:
        tags = client.get_registered_model(settings.model_name).tags
    except MlflowException as err:
        if err.error_code not in NOT_FOUND_CODES:
            raise RegistryUnavailableError(f"cannot read {settings.model_name}: {err}") from err
        client.create_registered_model(
            settings.model_name, tags={CONTRACT_TAG: _contract_tag(contract)}
        )
        return
    if CONTRACT_TAG not in tags:
        client.set_registered_model_tag(settings.model_name, CONTRACT_TAG, _contract_tag(contract))
        return
    registered = DataContract(**json.loads(tags[CONTRACT_TAG]))
    if tuple(registered.channels) != contract.channels or registered.freq != contract.freq:
        raise ContractError(
            f"the registered model {settings.model_name!r} forecasts {registered.describe()}; "
            f"this data has {contract.describe()}, so its model could never replace it. "
            "Set ROLLCAST_MODEL_NAME to a new name: one registered model per data contract"
        )


def _contract_tag(contract: DataContract) -> str:
    return json.dumps({"channels": list(contract.channels), "freq": contract.freq})


def load_version(settings: MlflowSettings, version: str) -> LoadedForecaster:
    """Download one version's checkpoint and rebuild it, never unpickling arbitrary code.

    The download goes to a temporary folder, removed once the weights are in memory.
    """
    uri = f"models:/{settings.model_name}/{version}"
    with tempfile.TemporaryDirectory(prefix="rollcast-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as err:
            failure = (
                RegistryError if err.error_code in NOT_FOUND_CODES else RegistryUnavailableError
            )
            raise failure(f"cannot download {uri}: {err}") from err
        checkpoint = next(local.rglob(CHECKPOINT_FILE), None)
        if checkpoint is None:
            raise RegistryError(f"{uri} has no {CHECKPOINT_FILE}: was it logged by Rollcast?")
        return LoadedForecaster(settings.model_name, version, load_checkpoint(checkpoint))


def load_champion(settings: MlflowSettings) -> LoadedForecaster:
    version = champion_version(settings)
    if version is None:
        raise RegistryError(
            f"model {settings.model_name!r} has no {settings.champion_alias!r} alias: "
            "run `rollcast train` first"
        )
    return load_version(settings, version)


def record_verdict(
    settings: MlflowSettings, logged: LoggedVersion, margins: dict[str, float], reason: str
) -> None:
    """The promotion decision on the training run (margins as metrics) and on the version."""
    client = MlflowClient()
    for name, value in margins.items():
        client.log_metric(logged.run_id, name, value)
    client.set_tag(logged.run_id, "rollcast.promotion", reason)
    tag_version(settings, logged.version, {"promotion": reason})


def log_online_error(
    settings: MlflowSettings, version: str, mse: float, values: int, scored: int
) -> None:
    """Serve's online MSE of ``version`` (validation units) over ``values`` forecast values,
    on the run that trained it. The step is how many values of the version had been scored.
    """
    client = MlflowClient()
    run_id = _run_of(client, settings, version)
    client.log_metric(run_id, ONLINE_MSE, mse, step=scored)
    client.log_metric(run_id, ONLINE_VALUES, values, step=scored)


def online_error(
    settings: MlflowSettings, version: str, min_values: int = 1
) -> tuple[float, float, int] | None:
    """(validation MSE, online MSE, values behind it) of ``version``: serve's latest reports,
    merged from the newest back until they cover ``min_values`` forecast values (or all there
    are); None before serve's first report."""
    client = MlflowClient()
    run_id = _run_of(client, settings, version)
    mses = {m.step: m.value for m in client.get_metric_history(run_id, ONLINE_MSE)}
    counts = {m.step: m.value for m in client.get_metric_history(run_id, ONLINE_VALUES)}
    squared, values = 0.0, 0
    for step in sorted(mses.keys() & counts.keys(), reverse=True):
        squared, values = squared + mses[step] * counts[step], values + int(counts[step])
        if values >= min_values:
            break
    if not values:
        return None
    return client.get_run(run_id).data.metrics["val_mse"], squared / values, values


def record_drift(
    settings: MlflowSettings, version: str, figures: dict[str, float], why: str
) -> None:
    """A drift check's figures (metrics) and decision (a tag) on the champion's training run."""
    client = MlflowClient()
    run_id = _run_of(client, settings, version)
    for name, value in figures.items():
        client.log_metric(run_id, name, value)
    client.set_tag(run_id, "rollcast.drift", why[:5000])


def _run_of(client: MlflowClient, settings: MlflowSettings, version: str) -> str:
    run_id = client.get_model_version(settings.model_name, version).run_id
    if run_id is None:
        raise RegistryError(f"version {version} of {settings.model_name} has no run")
    return str(run_id)


def promote(settings: MlflowSettings, version: str) -> None:
    MlflowClient().set_registered_model_alias(settings.model_name, settings.champion_alias, version)
    logger.info("%s version %s is now %s", settings.model_name, version, settings.champion_alias)


def tag_version(settings: MlflowSettings, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
