"""The demo: the whole path on the embedded default, from an empty broker to published forecasts."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from flows.ingest import ingest_flow
from flows.prefect_server import tie_temporary_server
from flows.serve import serve_flow
from flows.train import train_flow
from pipeline import RollcastError, registry
from pipeline.broker import EmbeddedBroker
from pipeline.config import MlflowSettings, ServeSettings, Settings
from pipeline.datasets import FleetSpec, frame_to_observations, load_csv, synthetic_fleet
from pipeline.kafka_io import KafkaTransport
from pipeline.metrics import require_free_port
from pipeline.progress import by_reason
from pipeline.tracking import connect_reader, experiment_page
from pipeline.transport import Transport, replay

logger = logging.getLogger(__name__)

# The synthetic fleet's size when --records is not given (a file is replayed whole).
SYNTHETIC_RECORDS = 16_000


@dataclass(frozen=True)
class DemoOptions:
    series: int = 8
    # In all, spread evenly over the series; None: SYNTHETIC_RECORDS, or every row of ``data``.
    records: int | None = None
    data: Path | None = None
    # A short budget keeps the demo to about two minutes on 2 cores; `rollcast train` runs the
    # full default (early stopping took the same fleet to 500 steps). 100 steps no longer beat
    # the gate once seasonal-naive's period came from the data (a week: 0.0084 against 0.0120);
    # 300 steps give 0.0071.
    max_steps: int | None = 300


@dataclass(frozen=True)
class Observations:
    """What the demo replays, and where it came from: a file (whole or cut) or the fleet."""

    frame: pd.DataFrame
    source: str  # e.g. "ETTh1.csv: all 17420 rows"


@dataclass(frozen=True)
class DemoSummary:
    source: str
    records_in: int
    rows_stored: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    forecasts_out: int
    series_forecast: int
    model_name: str
    model_version: str  # the version this demo trained and registered
    served_version: str  # the champion that made the forecasts
    promoted: bool
    val_mse: float
    seasonal_naive_mse: float
    repeat_last_mse: float
    mlflow_run_id: str
    mlflow_ui: str
    mlflow_page: str  # the experiment's training runs, once that UI is up
    wall_s: float

    def lines(self) -> list[str]:
        gain = 1 - self.val_mse / self.seasonal_naive_mse if self.seasonal_naive_mse else 0.0
        return [
            f"data              {self.source}",
            f"records in        {self.records_in} ({self.rows_stored} rows stored)",
            f"dead letters      {by_reason(self.dead_letters_by_reason)}",
            f"forecasts out     {self.forecasts_out} for {self.series_forecast} series",
            f"model             {self.model_name} v{self.model_version} "
            + ("(champion)" if self.promoted else f"(not promoted: v{self.served_version} served)"),
            f"validation MSE    {self.val_mse:.4f}  vs seasonal naive {self.seasonal_naive_mse:.4f}"
            f" ({gain:+.0%})  and repeat-last {self.repeat_last_mse:.4f}",
            f"look at the run   {self.mlflow_ui}",
            f"  and open        {self.mlflow_page}",
            f"wall time         {self.wall_s:.0f} s",
        ]


def observations(options: DemoOptions) -> Observations:
    """The file's rows (all of them unless ``options.records`` says fewer), or the fleet's."""
    if options.data is not None:
        whole = load_csv(options.data)
        frame = whole if options.records is None else whole.head(options.records)
        name, rows = options.data.name, len(frame)
        cut = f"all {rows} rows" if rows == len(whole) else f"first {rows} of {len(whole)} rows"
        return Observations(frame, f"{name}: {cut}")
    records = SYNTHETIC_RECORDS if options.records is None else options.records
    per_series = max(1, records // options.series)
    fleet = FleetSpec(n_series=options.series, n_steps=per_series)
    return Observations(
        synthetic_fleet(fleet), f"synthetic fleet: {options.series} series x {per_series} steps"
    )


def run_demo(options: DemoOptions, settings: Settings | None = None) -> DemoSummary:
    """Run every stage against a fresh embedded broker, with ``settings`` (default: read from
    ``ROLLCAST_*``; the broker's address is the embedded one's).

    The options, the data and the metrics port are checked before anything is touched.
    """
    started = time.monotonic()
    settings = settings or Settings()
    store, mlflow_settings = settings.store, settings.mlflow
    data = checked_input(options, settings.serve)
    tie_temporary_server()  # Prefect's server dies with the demo, however it ends
    logger.info("replaying %s", data.source)
    store.data_dir.mkdir(parents=True, exist_ok=True)
    # The embedded broker starts empty (its offsets from 0), so the demo's table does too.
    if "://" not in store.table_uri:
        shutil.rmtree(store.table_uri, ignore_errors=True)
    with EmbeddedBroker(log_path=store.data_dir / "broker.log") as broker:
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        transport = KafkaTransport(kafka)
        transport.create_topics(transport.topics.all(), kafka.topic_partitions)
        produced = produce(transport, data.frame)
        settings = settings.model_copy(update={"kafka": kafka})
        ingested = ingest_flow(max_records=produced, settings=settings)
        trained = train_flow(max_steps=options.max_steps, settings=settings)
        require_champion(trained, mlflow_settings)
        served = serve_flow(max_records=produced, settings=settings)
    wall_s = time.monotonic() - started
    return summarize(data.source, (produced, ingested, trained, served), mlflow_settings, wall_s)


def checked_input(options: DemoOptions, serve: ServeSettings) -> Observations:
    """The observations to replay, once the options and the serve stage's port are sound."""
    for name in ("series", "records", "max_steps"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise DemoError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if options.data is not None and not options.data.is_file():
        raise DemoError(f"--data {options.data}: no such file")
    if serve.metrics_port:
        require_free_port(serve.metrics_host, serve.metrics_port)
    return observations(options)


def require_champion(trained: dict, mlflow_settings: MlflowSettings) -> None:
    """Stop with the gate's reason when training left nothing to serve."""
    if trained["promoted"] or registry.champion_version(connect_reader(mlflow_settings)):
        return
    raise DemoError(
        f"version {trained['version']} was not promoted: its validation MSE "
        f"{trained['val_mse']:.4f} does not beat seasonal-naive's "
        f"{trained['val_seasonal_naive_mse']:.4f}, so there is no champion to serve. "
        "Train longer (--max-steps) or set ROLLCAST_PROMOTION_GATE=false."
    )


class DemoError(RollcastError):
    """The demo cannot go on."""


def produce(transport: Transport, frame: pd.DataFrame) -> int:
    sink = transport.sink()
    try:
        return replay(sink, frame_to_observations(frame), total=len(frame))
    finally:
        sink.close()


def summarize(
    source: str,
    stages: tuple[int, dict, dict, dict],
    mlflow_settings: MlflowSettings,
    wall_s: float,
) -> DemoSummary:
    """The summary from each stage's: (records produced, ingest's, train's, serve's)."""
    produced, ingested, trained, served = stages
    uri = mlflow_settings.mlflow_tracking_uri
    # Ingest's: serve reads the same records and refuses the same ones again.
    dead_letters = {str(reason): int(n) for reason, n in dict(ingested["dead_letters"]).items()}
    return DemoSummary(
        source=source,
        records_in=produced,
        rows_stored=int(ingested["rows_written"]),
        dead_letters=sum(dead_letters.values()),
        dead_letters_by_reason=dead_letters,
        forecasts_out=int(served["forecasts_out"]),
        series_forecast=int(served["series_forecast"]),
        model_name=str(trained["model_name"]),
        model_version=str(trained["version"]),
        served_version=str(served["model_version"]),
        promoted=bool(trained["promoted"]),
        val_mse=float(trained["val_mse"]),
        seasonal_naive_mse=float(trained["val_seasonal_naive_mse"]),
        repeat_last_mse=float(trained["val_repeat_last_mse"]),
        mlflow_run_id=str(trained["run_id"]),
        mlflow_ui=f".venv/bin/mlflow ui --backend-store-uri {uri} --port 5000",
        mlflow_page=experiment_page("http://127.0.0.1:5000", str(trained["experiment_id"])),
        wall_s=round(wall_s, 1),
    )


def summary_dict(summary: DemoSummary) -> dict[str, object]:
    return asdict(summary)
