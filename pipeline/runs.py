"""MLflow runs: a training run, a search and its trials, a backtest, a registered checkpoint.

Every run is opened by :func:`open_run` through a :class:`~pipeline.tracking.Tracking` client,
never made MLflow's active run: RUNNING inside its block, FINISHED after it, FAILED when an
exception escapes, as ``mlflow.start_run`` leaves one. Every run carries its owner (host, pid,
process start) and a heartbeat tag refreshed every ``HEARTBEAT_S`` while it is open, by which a
later run tells one whose process was killed (:func:`pipeline.tracking.fail_abandoned_runs`,
called as a search begins, and by the train flow). A run begun now carries the source tags
``mlflow.start_run`` gives one (user, entry point, git commit; :func:`source_tags`); a training
run is dated back to when training began (:class:`RunLabel`), and carries only its own tags.
A training run's one-off figures (errors, steps, time) are metrics, to sort and compare runs
by, and also a table in its description, which the run's page shows first; its errors at each
step ahead are one metric per kind stepped by horizon, so the UI draws them as lines.
Params and metrics go in batches: one request per kind of record, not one per value. A training
run records the series table version it read as its MLflow dataset input (:class:`TableInput`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pandas as pd
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry
from mlflow.types import ColSpec, DataType, Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.evaluate import Scorecard
from pipeline.figures import forecast_figure, loss_figure, search_figure
from pipeline.forecast import example_history
from pipeline.model import Forecaster
from pipeline.packaging import log_model
from pipeline.recipe import TrainConfig
from pipeline.registry import LoggedVersion
from pipeline.tracking import HEARTBEAT, Owner, Tracking, fail_abandoned_runs
from pipeline.train import TrainResult
from pipeline.windows import SERIES, TS, WindowSet

if TYPE_CHECKING:  # Optuna is loaded by the search alone, not by serve
    from pipeline.tuning import SearchResult, TrialRecord

logger = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
# The name of a training run's dataset input, and its context ("training", as MLflow suggests).
DATASET_NAME = "series"
DATASET_CONTEXT = "training"
# How often an open run's heartbeat tag is refreshed: one small write a minute, against the
# hours of silence (tracking.STALE_AFTER_S) after which another host takes the run as abandoned.
HEARTBEAT_S = 60.0
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description, Markdown, on its page


@dataclass(frozen=True)
class RunLabel:
    """What the MLflow UI shows of a training run before it is opened."""

    started_ms: int  # when training began, so the run's duration is the training's
    data: str  # e.g. "8 series 1h to 2016-07-11"


@dataclass(frozen=True)
class TrainingRun:
    """What a training run logs: the trained model and its curve, settings, scores and data."""

    label: RunLabel
    result: TrainResult
    train_config: TrainConfig
    card: Scorecard
    val: WindowSet  # the validation windows, some of them plotted
    example: pd.DataFrame  # the pyfunc's input example
    data_params: dict[str, Any]  # logged as data.<key>
    table: TableInput | None = None  # the table version read: the run's dataset input
    params: dict[str, Any] = field(default_factory=dict)  # logged as named


@dataclass(frozen=True)
class TableInput:
    """The series table version a training run read, logged as the run's dataset input.

    The digest names the version (``v12-…``), followed by a hash of the table's URI and the
    sampling cutoff, so another table's version 12, or a sample of it, is another dataset.
    """

    uri: str
    version: int
    channels: tuple[str, ...]
    rows_read: int
    sampled_since: int | None = None  # epoch ms: only rows after it were read

    def digest(self) -> str:
        """E.g. ``v12-3f9a0c1e``: at most 36 characters, as MLflow stores it."""
        where = hashlib.sha256(f"{self.uri}|{self.sampled_since}".encode()).hexdigest()[:8]
        return f"v{self.version}-{where}"

    def dataset_input(self) -> DatasetInput:
        """The MLflow dataset input: a Delta table source at the version, and its columns."""
        columns: list[ColSpec | TensorSpec] = [
            ColSpec(DataType.string, SERIES),
            ColSpec(DataType.datetime, TS),
            *(ColSpec(DataType.double, name) for name in self.channels),
        ]
        source = TableSource(path=self.uri, delta_table_version=self.version)
        dataset = TableDataset(source, self.digest(), Schema(columns), {"rows": self.rows_read})
        context = InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)
        return DatasetInput(dataset._to_mlflow_entity(), tags=[context])


class TableDataset(MetaDataset):
    """MLflow's metadata-only dataset, named ``series``, with a profile (the rows read)."""

    def __init__(
        self, source: DeltaDatasetSource, digest: str, schema: Schema, profile: dict[str, Any]
    ) -> None:
        self._profile = profile
        super().__init__(source, DATASET_NAME, digest, schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


class TableSource(DeltaDatasetSource):
    """MLflow's Delta table source, with version 0 kept in its JSON (MLflow's drops it)."""

    def to_dict(self) -> dict[Any, Any]:
        info = dict(super().to_dict())
        if self.delta_table_version is not None:
            info["delta_table_version"] = self.delta_table_version
        return info


@contextmanager
def open_run(
    tracking: Tracking,
    name: str,
    tags: dict[str, str] | None = None,
    started_ms: int | None = None,
) -> Iterator[str]:
    """A new run in the experiment, begun at ``started_ms`` (None: now); yields its id.

    The run carries this process as its owner, and a heartbeat while the block runs.
    """
    client = tracking.client
    owned = {**(tags or {}), **Owner.this_process().tags(), HEARTBEAT: str(_now_ms())}
    created = client.create_run(
        tracking.experiment(), start_time=started_ms, tags=owned, run_name=name
    )
    run_id = created.info.run_id
    try:
        with _heartbeat(client, run_id):
            yield run_id
    except BaseException:  # KeyboardInterrupt too, as mlflow.start_run ends a run
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


@contextmanager
def _heartbeat(client: MlflowClient, run_id: str) -> Iterator[None]:
    """The run's heartbeat tag refreshed every ``HEARTBEAT_S`` by a thread, while the block runs."""
    stop = threading.Event()
    beating = threading.Thread(
        target=_beat, args=(client, run_id, stop), name=f"heartbeat-{run_id}", daemon=True
    )
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()


def _beat(client: MlflowClient, run_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            client.set_tag(run_id, HEARTBEAT, str(_now_ms()))
        except Exception as err:  # a store down or locked: a missed beat only ages the run
            logger.warning("heartbeat of MLflow run %s not recorded: %r", run_id, err)


def _now_ms() -> int:
    return int(time.time() * 1000)


def source_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` plus MLflow's source tags (user, entry point, git commit), as runs begun now get."""
    return dict(context_registry.resolve_tags(tags))


def log_values(
    client: MlflowClient,
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> None:
    """Params (as text) and metrics (at step 0) on the run, in one batch."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(key, value, now, 0) for key, value in (metrics or {}).items()],
        params=[Param(key, str(value)) for key, value in (params or {}).items()],
    )


def log_figure(client: MlflowClient, run_id: str, figure: plt.Figure, path: str) -> None:
    """The figure as a PNG at ``path`` among the run's artifacts; the figure is closed."""
    try:
        client.log_figure(run_id, figure, path)
    finally:
        plt.close(figure)


def log_training_run(tracking: Tracking, run: TrainingRun) -> LoggedVersion:
    """Log params, the table version read, the losses at each validation, metrics, plots and
    the model; register it.

    The run is named after the flow, the data and the version it registered.
    """
    client, result = tracking.client, run.result
    name = f"train {tracking.settings.model_name}: {run.label.data}"
    with open_run(tracking, name, started_ms=run.label.started_ms) as run_id:
        params = _params(result.model, run.train_config, run.data_params)
        log_values(client, run_id, params={**params, **run.params})
        if run.table is not None:
            client.log_inputs(run_id, datasets=[run.table.dataset_input()])
        client.log_batch(run_id, metrics=[*_history(result), *_by_horizon(run.card)])
        summary = _summary(run)
        log_values(client, run_id, metrics=summary)  # before the model, which links to them
        client.set_tag(run_id, DESCRIPTION_TAG, describe_scores(summary))
        log_figure(client, run_id, loss_figure(result), "plots/loss.png")
        figure = forecast_figure(result.model, run.val)
        log_figure(client, run_id, figure, "plots/validation_forecast.png")
        version = log_model(tracking, run_id, result.model, run.example)
        client.update_run(run_id, name=f"{name}, v{version}")
    logger.info(
        "logged run %s, registered %s version %s", run_id, tracking.settings.model_name, version
    )
    return LoggedVersion(run_id, version)


def _summary(run: TrainingRun) -> dict[str, float]:
    result = run.result
    return {
        **run.card.as_metrics(),
        "best_step": result.best_step,
        "steps": result.steps,
        "train_seconds": sum(stats.seconds for stats in result.history),
        "samples_per_s": result.samples_per_s,
    }


# The rows of a training run's description: a summary metric and how to say it.
SCORE_ROWS = (
    ("val_mse", "validation MSE (scaled)", "{:.4g}"),
    ("val_seasonal_naive_mse", "seasonal-naive MSE", "{:.4g}"),
    ("val_repeat_last_mse", "repeat-last MSE", "{:.4g}"),
    ("val_mae", "validation MAE (scaled)", "{:.4g}"),
    ("best_step", "best validation at step", "{:.0f}"),
    ("steps", "optimizer steps", "{:.0f}"),
    ("train_seconds", "training time (s)", "{:.1f}"),
    ("samples_per_s", "training samples per second", "{:.0f}"),
)


def describe_scores(summary: dict[str, float]) -> str:
    """A Markdown table of a training run's figures, for its description.

    >>> print(describe_scores({"val_mse": 0.25, "steps": 120}))
    | figure | value |
    |---|---|
    | validation MSE (scaled) | 0.25 |
    | optimizer steps | 120 |
    """
    rows = [
        f"| {label} | {form.format(summary[key])} |"
        for key, label, form in SCORE_ROWS
        if key in summary
    ]
    return "\n".join(["| figure | value |", "|---|---|", *rows])


def _by_horizon(card: Scorecard) -> list[Metric]:
    """The errors at each step ahead, stepped by it (1 to H): a line over the horizon."""
    now = _now_ms()
    return [
        Metric(key, value, now, ahead)
        for key, values in card.by_horizon().items()
        for ahead, value in enumerate(values, start=1)
    ]


def _history(result: TrainResult) -> list[Metric]:
    """The losses and learning rate at each validation, stepped by optimizer step."""
    now = int(time.time() * 1000)
    return [
        Metric(key, value, now, stats.step)
        for stats in result.history
        for key, value in (
            ("train_loss", stats.train_loss),
            ("val_loss", stats.val_loss),
            ("learning_rate", stats.learning_rate),
        )
        if math.isfinite(value)  # the start's train_loss: no step taken yet
    ]


def _params(model: Forecaster, train_config: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    model_params = {f"model.{k}": v for k, v in model.config.to_dict().items()}
    train_params = {f"train.{k}": v for k, v in asdict(train_config).items()}
    return {**model_params, **train_params, **{f"data.{k}": v for k, v in data.items()}}


def register_checkpoint(tracking: Tracking, model: Forecaster, source: str) -> str:
    """Register a forecaster trained elsewhere (a GPU machine, a notebook) as a new version.

    The run holds the model config as params and ``source`` as a tag; no alias moves.
    """
    name = f"register-{tracking.settings.model_name}"
    with open_run(tracking, name, source_tags({"rollcast.source": source})) as run_id:
        params = {f"model.{k}": v for k, v in model.config.to_dict().items()}
        log_values(tracking.client, run_id, params=params)
        version = log_model(tracking, run_id, model, example_history(model.config))
    logger.info(
        "registered %s from %s as version %s", tracking.settings.model_name, source, version
    )
    return version


@contextmanager
def search_run(tracking: Tracking, name: str, params: dict[str, Any]) -> Iterator[str]:
    """The parent run of a search; yields its id. Trials are logged as its children.

    Runs left RUNNING by a killed search or training are marked failed first.
    """
    with open_run(tracking, name, source_tags({"rollcast.kind": "search"})) as run_id:
        fail_abandoned_runs(tracking, f"run {run_id}")
        log_values(tracking.client, run_id, params=params)
        yield run_id


def log_trial(tracking: Tracking, search_id: str, record: TrialRecord) -> None:
    """One trial as a child run of the search run: its candidate, curve and outcome."""
    tags = source_tags({PARENT_RUN_TAG: search_id, "rollcast.trial_state": record.state})
    with open_run(tracking, f"trial-{record.number}", tags) as run_id:
        now = int(time.time() * 1000)
        curve = [Metric("val_mse", stats.val_mse, now, stats.step) for stats in record.history]
        tracking.client.log_batch(run_id, metrics=curve)
        outcome = {"final_val_mse": record.val_mse, "seconds": record.seconds}
        log_values(tracking.client, run_id, record.candidate.as_params(), outcome)


def log_search_result(
    tracking: Tracking, search_id: str, result: SearchResult, tuned: dict[str, Any]
) -> None:
    """The best trial on the search run, and the reusable config as an artifact."""
    client = tracking.client
    best = {f"best.{k}": v for k, v in result.best.candidate.as_params().items()}
    metrics = {
        "best_val_mse": result.best.val_mse,
        "trials": len(result.trials),
        "pruned_trials": result.pruned,
    }
    log_values(client, search_id, best, metrics)
    client.log_dict(search_id, tuned, "tuned_config.json")
    log_figure(client, search_id, search_figure(result), "plots/search.png")


def log_backtest(tracking: Tracking, metrics: dict[str, Any], out_dir: Path) -> str:
    """One MLflow run per backtest: its settings as params, its errors as metrics, its files."""
    parts = (metrics["dataset"], metrics["model"], metrics["features"], f"H{metrics['horizon']}")
    name = "backtest-" + "-".join(map(str, parts))
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    params = {k: v for k, v in metrics.items() if k not in numeric and not isinstance(v, dict)}
    for section in ("model_config", "train_config"):
        params.update({f"{section}.{k}": v for k, v in dict(metrics.get(section, {})).items()})
    with open_run(tracking, name, source_tags({})) as run_id:
        log_values(tracking.client, run_id, params, numeric)
        tracking.client.log_artifacts(run_id, str(out_dir), artifact_path="backtest")
    return run_id
