"""The stages wired to their edges: a transport, the MLflow registry and the metrics endpoint.

The loops (:mod:`pipeline.ingest`, :mod:`pipeline.serve`) know only the transport port and the
core; this module builds what they run on from settings objects, which the entry points (the
``rollcast`` command, the Prefect flows) read once and pass in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline import monitoring, registry, shutdown
from pipeline.config import (
    IngestSettings,
    MlflowSettings,
    RecordSettings,
    ServeSettings,
    StoreSettings,
)
from pipeline.delta_store import DeltaSeriesStore
from pipeline.forecast import LoadedForecaster, resolve_precision
from pipeline.ingest import FlushPolicy, IngestPlan, IngestReport, run_ingest
from pipeline.maintenance import migrate_if_found
from pipeline.metrics import serve_metrics
from pipeline.serve import (
    BatchCap,
    LiveSwap,
    RollingForecaster,
    freeze_heap,
    new_stats,
    run_serve,
    stop_rule,
)
from pipeline.stats import OnlineErrorReporter, SeriesGroups, ServeStats
from pipeline.swap import ChampionWatcher, LocalCopy, ModelSlot
from pipeline.tracking import connect_reader
from pipeline.transport import Rebalance, Transport

logger = logging.getLogger(__name__)


def open_store(settings: StoreSettings) -> DeltaSeriesStore:
    """The series table the settings name; a store of the old layout is migrated into it."""
    store = DeltaSeriesStore(settings.table_uri, settings.store_options)
    migrate_if_found(settings.legacy_store_dir, store)
    return store


def ingest_from_settings(
    transport: Transport,
    store: StoreSettings,
    ingest: IngestSettings,
    records: RecordSettings,
    max_records: int | None = None,
) -> IngestReport:
    """The ingest stage on ``transport``, into the series table, until idle or SIGTERM."""
    with shutdown.stop_on_sigterm():
        return _ingest(transport, store, ingest, records, max_records)


def _ingest(
    transport: Transport,
    store: StoreSettings,
    ingest: IngestSettings,
    records: RecordSettings,
    max_records: int | None,
) -> IngestReport:
    source = transport.source(transport.topics.observations, ingest.ingest_group)
    sink = transport.sink()
    flush = FlushPolicy(ingest.ingest_flush_records, ingest.ingest_flush_s)
    plan = IngestPlan(
        ingest.ingest_idle_s,
        store.freq,
        records.policy(),
        max_records,
        flush,
        ingest.ingest_max_series,
    )
    try:
        return run_ingest(source, open_store(store), sink, plan)
    finally:
        source.close()
        sink.close()


def serve_from_settings(
    transport: Transport,
    store: StoreSettings,
    mlflow_settings: MlflowSettings,
    serve: ServeSettings,
    records: RecordSettings,
    max_records: int | None = None,
) -> tuple[ServeStats, LoadedForecaster]:
    """The serve stage on ``transport``, with the registry's champion and the metrics endpoint.

    Runs until ``max_records`` are served, ``serve.serve_idle_s`` pass without a record,
    or forever when both are None. Returns the stats and the version serving at the end.
    """
    local_copy = LocalCopy(store.data_dir / "champion", mlflow_settings.model_name)
    champion = start_champion(mlflow_settings, local_copy)
    logger.info("serving %s version %s", champion.name, champion.version)
    device = next(champion.model.parameters(), champion.model.scale).device
    precision = resolve_precision(serve.inference_precision, device)
    logger.info("forecasting in %s", str(precision).removeprefix("torch."))
    rolling = RollingForecaster(
        champion,
        serve.max_series,
        records.policy(),
        serve.max_new_series,
        serve.forecast_format,
        precision,
    )
    groups = SeriesGroups(serve.interval_group_fields, serve.interval_group_separator)
    stats = new_stats(rolling, serve.interval_gain, groups)
    if serve.metrics_port:
        serve_metrics(stats, serve.metrics_port, serve.metrics_host)
        logger.info(
            "Prometheus metrics on http://%s:%d/metrics", serve.metrics_host, serve.metrics_port
        )
    slot = ModelSlot()
    watcher = champion_watcher(mlflow_settings, champion.version, slot, serve.champion_poll_s)
    rebalance = Rebalance(serve.rewind_records, rolling.forget_partitions)
    source = transport.source(
        transport.topics.observations, serve.serve_group, serve.max_poll_records, rebalance
    )
    sink = transport.sink()
    reporter = online_error_reporter(mlflow_settings, stats, serve.online_report_s)
    freeze_heap()
    watcher.start()
    with shutdown.stop_on_sigterm() as stopping:
        try:
            stop = stop_rule(max_records, serve.serve_idle_s, stopping, serve.join_grace_s)
            swap = LiveSwap(slot, keep_copy(local_copy))
            cap = BatchCap(serve.batch_forecasts, serve.batch_ms / 1000)
            run_serve(source, sink, rolling, stop, swap, stats, cap)
        finally:
            watcher.stop()
            if reporter is not None:
                reporter.stop()
            source.close()
            sink.close()
    return stats, rolling.forecaster


def online_error_reporter(
    settings: MlflowSettings, stats: ServeStats, interval_s: float
) -> OnlineErrorReporter | None:
    """A started thread logging the online MSE to MLflow every ``interval_s`` (0: none)."""
    if not interval_s:
        return None

    def report(
        version: str, mse: float, values: int, scored: int, coverage: dict[float, float]
    ) -> None:
        tracking = connect_reader(settings)
        monitoring.log_online_error(tracking, version, mse, values, scored, coverage)

    reporter = OnlineErrorReporter(stats, report, interval_s)
    reporter.start()
    return reporter


def start_champion(settings: MlflowSettings, local_copy: LocalCopy) -> LoadedForecaster:
    """The registry's champion, kept locally; the local copy when the registry is down.

    "No champion" is an error; "registry unreachable" falls back on the copy, and is an error
    only when there is none.
    """
    try:
        champion = registry.load_champion(connect_reader(settings))
    except registry.RegistryUnavailableError as err:
        kept = local_copy.load()
        if kept is None:
            raise registry.RegistryUnavailableError(
                f"{err}; and there is no local copy of a champion to start from"
            ) from err
        logger.warning(
            "MLflow is unreachable (%s): serving the local copy of version %s", err, kept.version
        )
        return kept
    keep_copy(local_copy)(champion)
    return champion


def keep_copy(local_copy: LocalCopy) -> Callable[[LoadedForecaster], None]:
    def save(forecaster: LoadedForecaster) -> None:
        try:
            local_copy.save(forecaster)
        except OSError as err:  # a full disk must not stop serving
            logger.error("cannot keep a local copy of version %s: %s", forecaster.version, err)

    return save


def champion_watcher(
    settings: MlflowSettings, current_version: str, slot: ModelSlot, interval_s: float
) -> ChampionWatcher:
    """A watcher thread that reads the champion alias from the MLflow registry.

    Each check connects anew (cheap: MLflow keeps one store per URI), so a store that was
    missing when serve started from its local copy is read once it is back.
    """
    return ChampionWatcher(
        current_version,
        lambda: registry.champion_version(connect_reader(settings)),
        lambda version: registry.load_version(connect_reader(settings), version),
        slot,
        interval_s,
    )
