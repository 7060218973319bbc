"""The ``rollcast`` command: an entry point of the app, beside the flows it runs.

Every command reads its settings from ``ROLLCAST_*`` environment variables once (see
pipeline/config.py), applies the options below over a few, and passes the settings down.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pipeline import RollcastError
from pipeline.config import KafkaSettings, Settings

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import MlflowSettings, StoreSettings
    from pipeline.store import StoreInfo

logger = logging.getLogger("flows.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Client libraries that are chatty at INFO.
QUIET_LOGGERS = ("kafka", "alembic", "mlflow", "httpx", "urllib3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollcast", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_services, add_producers, add_stages, add_store, add_model_commands):
        add(commands)
    return parser


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_demo(commands: Commands) -> None:
    demo = commands.add_parser("demo", help="run the whole path on the embedded default")
    demo.add_argument("--series", type=int, default=8, help="synthetic series (default 8)")
    demo.add_argument("--records", type=int, default=16_000, help="records in all (default 16000)")
    demo.add_argument("--data", type=Path, help="replay this CSV instead of the synthetic fleet")
    demo.add_argument("--max-steps", type=int, default=100, help="training steps (default 100)")
    demo.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    demo.set_defaults(handler=cmd_demo)


def add_services(commands: Commands) -> None:
    broker = commands.add_parser("broker", help="start the embedded broker and block")
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(handler=cmd_broker)
    stack = commands.add_parser(
        "stack", help="run MLflow and Prefect servers on PostgreSQL (ROLLCAST_POSTGRES_URL)"
    )
    stack.set_defaults(handler=cmd_stack)


def add_producers(commands: Commands) -> None:
    replay = commands.add_parser("replay", help="produce a CSV's rows as observations")
    replay.add_argument("csv", type=Path)
    replay.add_argument("--series-id", help="series id (default: the file name)")
    replay.add_argument("--limit", type=int, help="rows to send")
    replay.set_defaults(handler=cmd_replay)
    synth = commands.add_parser("synth", help="produce the synthetic sensor fleet")
    synth.add_argument("--series", type=int, default=8)
    synth.add_argument("--records", type=int, default=16_000, help="records in all")
    synth.set_defaults(handler=cmd_synth)


def add_stages(commands: Commands) -> None:
    ingest = commands.add_parser("ingest", help="run the ingest flow once")
    ingest.add_argument("--max-records", type=int)
    ingest.set_defaults(handler=cmd_ingest)
    train = commands.add_parser("train", help="run the train flow once")
    train.add_argument("--max-steps", type=int, help="optimizer steps at most")
    train.add_argument("--tuned", type=Path, help="a tuned config written by `rollcast tune`")
    train.add_argument(
        "--as-of",
        type=_count,
        metavar="VERSION",
        help="train on this version of the series table (see `rollcast store info`)",
    )
    train.set_defaults(handler=cmd_train)
    tune = commands.add_parser(
        "tune", help="search shapes and training settings on the store's validation windows"
    )
    tune.add_argument("--trials", type=int, help="trials at most (default 20)")
    tune.add_argument("--timeout-s", type=float, help="stop starting trials after this long")
    tune.add_argument(
        "--trial-timeout-s", type=float, help="stop a candidate (not the defaults) after this long"
    )
    tune.set_defaults(handler=cmd_tune)
    serve = commands.add_parser("serve", help="serve forecasts until stopped")
    serve.add_argument("--max-records", type=int, help="stop after this many records")
    serve.add_argument("--idle-s", type=float, help="stop after this long without records")
    serve.set_defaults(handler=cmd_serve)


def add_store(commands: Commands) -> None:
    store = commands.add_parser("store", help="the series table: info, compact, migrate")
    actions = store.add_subparsers(dest="action", required=True)
    info = actions.add_parser("info", help="where the table is, its version, rows, files, bytes")
    info.add_argument("--json", action="store_true", help="print it as one JSON line")
    info.set_defaults(handler=cmd_store_info)
    compact = actions.add_parser(
        "compact", help="drop repeated rows, merge small files, delete old ones (a flow run)"
    )
    compact.add_argument(
        "--retention-hours",
        type=_hours,
        help="keep the files versions this recent need (default: ROLLCAST_STORE_RETENTION_HOURS)",
    )
    compact.add_argument("--json", action="store_true", help="print the report as one JSON line")
    compact.set_defaults(handler=cmd_store_compact)
    migrate = actions.add_parser(
        "migrate", help="append the rows of a one-Parquet-file-per-series store to the table"
    )
    migrate.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="PATH",
        help="its folder (default: DATA_DIR/store)",
    )
    migrate.set_defaults(handler=cmd_store_migrate)


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more")
    return int(text)


def _hours(text: str) -> float:
    """An argparse type: a finite number of hours, 0 or more."""
    try:
        hours = float(text)
    except ValueError:
        hours = float("nan")
    if not 0 <= hours < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours, 0 or more")
    return hours


def add_model_commands(commands: Commands) -> None:
    backtest = commands.add_parser("backtest", help="run the LTSF benchmark protocol on a CSV")
    backtest.add_argument("--data", type=Path, required=True, help="CSV: a date column, numbers")
    backtest.add_argument("--features", choices=["M", "S"], default="M")
    backtest.add_argument("--horizon", type=int, default=96)
    backtest.add_argument("--lookback", type=int, help="default: the model's, cut to the data")
    backtest.add_argument(
        "--model", default="lstm", help="lstm, dlinear, repeat_last, seasonal_naive"
    )
    backtest.add_argument("--target", default="OT", help="the S setting's column (default OT)")
    backtest.add_argument("--seed", type=int, default=0)
    backtest.add_argument("--max-steps", type=int, help="override the training step budget")
    backtest.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    backtest.set_defaults(handler=cmd_backtest)
    register = commands.add_parser(
        "register", help="register a checkpoint trained elsewhere as a new model version"
    )
    register.add_argument("checkpoint", type=Path, help="a .pt file written by Rollcast")
    register.add_argument("--promote", action="store_true", help="make it the champion")
    register.set_defaults(handler=cmd_register)


def cmd_demo(args: argparse.Namespace) -> None:
    from flows.demo import DemoOptions, run_demo, summary_dict

    summary = run_demo(DemoOptions(args.series, args.records, args.data, args.max_steps))
    print("\nRollcast demo\n" + "\n".join("  " + line for line in summary.lines()))
    if args.json:
        print(json.dumps(summary_dict(summary)))


def cmd_broker(args: argparse.Namespace) -> None:
    from pipeline.broker import EmbeddedBroker
    from pipeline.kafka_io import KafkaTransport

    with EmbeddedBroker(port=args.port) as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        transport = KafkaTransport(kafka)
        transport.create_topics(transport.topics.all(), kafka.topic_partitions)
        print(f"export ROLLCAST_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        print("embedded broker running (memory storage); Ctrl-C stops it", flush=True)
        _block_until_signal()


def cmd_stack(args: argparse.Namespace) -> None:
    from flows.stack import Stack
    from pipeline.config import StackSettings, StoreSettings

    root = StoreSettings().data_dir / "stack"
    with Stack(StackSettings(), root) as stack:
        for name, value in stack.env().items():
            print(f"export {name}={value}", flush=True)
        print(f"MLflow and Prefect on PostgreSQL (logs in {root}); Ctrl-C stops them", flush=True)
        _block_until_signal()


def _block_until_signal() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _produce(frame_source: Callable[[], pd.DataFrame]) -> None:
    from pipeline.datasets import frame_to_observations
    from pipeline.kafka_io import KafkaTransport
    from pipeline.transport import replay

    sink = KafkaTransport(KafkaSettings()).sink()  # fails fast, before the data is built
    try:
        frame = frame_source()
        sent = replay(sink, frame_to_observations(frame), total=len(frame))
    finally:
        sink.close()
    print(f"produced {sent} observations")


def cmd_replay(args: argparse.Namespace) -> None:
    from pipeline.datasets import load_csv

    _produce(lambda: load_csv(args.csv, args.series_id).head(args.limit or None))


def cmd_synth(args: argparse.Namespace) -> None:
    from pipeline.datasets import FleetSpec, synthetic_fleet

    per_series = max(1, args.records // args.series)
    _produce(lambda: synthetic_fleet(FleetSpec(n_series=args.series, n_steps=per_series)))


def cmd_ingest(args: argparse.Namespace) -> None:
    from pipeline.kafka_io import KafkaTransport

    kafka = KafkaSettings()
    KafkaTransport(kafka)  # says how to start a broker before Prefect starts
    from flows.ingest import ingest_flow
    from flows.prefect_server import tie_temporary_server

    tie_temporary_server()

    print(json.dumps(ingest_flow(max_records=args.max_records, settings=Settings(kafka=kafka))))


def cmd_train(args: argparse.Namespace) -> None:
    from flows.prefect_server import tie_temporary_server
    from flows.train import train_flow

    settings = None if args.as_of is None else settings_as_of(args.as_of)
    tie_temporary_server()

    reading = "the series table" if args.as_of is None else f"version {args.as_of} of the table"
    with table_errors(f"cannot read {reading}", vacuumed=args.as_of is not None):
        trained = train_flow(max_steps=args.max_steps, tuned_config=args.tuned, settings=settings)
    print(json.dumps(trained))


def settings_as_of(version: int) -> Settings:
    """The settings with training pinned to ``version`` of the series table, which must exist."""
    from pipeline.config import StoreSettings, TrainSettings

    store_settings = StoreSettings()
    require_version(store_settings, version)
    return Settings(store=store_settings, train=TrainSettings(data_version=version))


def require_version(settings: StoreSettings, version: int) -> None:
    """:class:`StoreError` unless the table has ``version``, and on a local disk its files."""
    from deltalake.exceptions import DeltaError

    from pipeline.store import StoreError
    from pipeline.wiring import open_store

    store = open_store(settings)
    try:
        table = store.at(version)  # reads the log only: the rows are read by the flow
    except DeltaError as err:
        newest = store.latest()
        if newest is not None and version > newest.version():
            raise StoreError(
                f"the series table {store.uri} has no version {version}: its newest is "
                f"{newest.version()} (`rollcast store info`)"
            ) from err
        raise StoreError(f"cannot read version {version} of {store.uri}: {err}") from err
    files = [] if table is None else table.file_uris()
    gone = [name for name in files if "://" not in name and not Path(name).exists()]
    if gone:
        raise StoreError(
            f"version {version} of the series table {store.uri} is gone: compaction deleted "
            f"{len(gone)} of its {len(files)} files, as it does those of versions older than "
            "ROLLCAST_STORE_RETENTION_HOURS"
        )


@contextmanager
def table_errors(what: str, vacuumed: bool = False) -> Iterator[None]:
    """The table's own errors (deltalake's) as :class:`StoreError`: a message, no traceback.

    With ``vacuumed``, a data file that is gone too: an old version whose files were deleted.
    """
    from deltalake.exceptions import DeltaError

    from pipeline.store import StoreError

    try:
        yield
    except DeltaError as err:
        raise StoreError(f"{what}: {err}") from err
    except FileNotFoundError as err:
        if not vacuumed:
            raise
        raise StoreError(
            f"{what}: {err}; compaction deletes the files of versions older than "
            "ROLLCAST_STORE_RETENTION_HOURS"
        ) from err


def cmd_tune(args: argparse.Namespace) -> None:
    from flows.prefect_server import tie_temporary_server
    from flows.tune import tune_flow

    tie_temporary_server()

    tuned = tune_flow(
        trials=args.trials, timeout_s=args.timeout_s, trial_timeout_s=args.trial_timeout_s
    )
    print(json.dumps(tuned))


def cmd_store_info(args: argparse.Namespace) -> None:
    from pipeline.config import StoreSettings
    from pipeline.wiring import open_store

    settings = StoreSettings()
    with table_errors(f"cannot read the series table {settings.table_uri}"):
        info = open_store(settings).info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info)))
    else:
        print("\n".join(describe_store(info)))


def describe_store(info: StoreInfo) -> list[str]:
    """``rollcast store info``'s lines."""
    if info.version is None:
        return [f"series table  {info.location}", "version       none: nothing stored yet"]
    return [
        f"series table  {info.location}",
        f"version       {info.version}",
        f"series        {info.series}",
        f"channels      {', '.join(info.channels) or 'none'}",
        f"rows          {info.rows} (repeated (series, ts) rows included)",
        f"files         {info.files}",
        f"bytes         {info.bytes} ({info.bytes / 2**20:.1f} MiB)",
    ]


def cmd_store_compact(args: argparse.Namespace) -> None:
    from flows.maintenance import compact_flow
    from flows.prefect_server import tie_temporary_server
    from pipeline.config import StoreSettings

    store = StoreSettings()
    tie_temporary_server()

    with table_errors(f"cannot compact the series table {store.table_uri}"):
        report = compact_flow(retention_hours=args.retention_hours, settings=Settings(store=store))
    if args.json:
        print(json.dumps(report))
        return
    hours = store.store_retention_hours if args.retention_hours is None else args.retention_hours
    print("\n".join(describe_compaction(store.table_uri, report, hours)))


def describe_compaction(location: str, report: dict[str, Any], hours: float) -> list[str]:
    """``rollcast store compact``'s lines, from the compaction report."""
    (files, files_after), (size, size_after) = report["files"], report["bytes"]
    rows, rows_after = report["rows"]
    return [
        f"compacted the series table {location}: version {report['version']}",
        f"  files                  {files} -> {files_after}",
        f"  bytes                  {size} -> {size_after}",
        f"  rows                   {rows} -> {rows_after}",
        f"  repeated rows removed  {report['duplicates_removed']}",
        f"  files vacuumed         {report['files_vacuumed']} (unused for {hours:g} h or more)",
    ]


def cmd_store_migrate(args: argparse.Namespace) -> None:
    from pipeline.config import StoreSettings
    from pipeline.delta_store import DeltaSeriesStore
    from pipeline.maintenance import migrate_parquet
    from pipeline.store import StoreError

    settings = StoreSettings()
    folder = args.source or settings.legacy_store_dir
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        raise StoreError(nothing_to_migrate(folder))
    # Not wiring.open_store: on an empty table it would migrate the default folder itself.
    store = DeltaSeriesStore(settings.table_uri, settings.store_options)
    with table_errors(f"cannot migrate {folder} into {store.uri}"), _unreadable(folder):
        rows = migrate_parquet(folder, store)
    print(f"migrated {rows} rows from {folder} into the series table {store.uri}")
    print(f"  {folder} is left as it was: migrating it again would store its rows twice")


def nothing_to_migrate(folder: Path) -> str:
    migrated = folder.with_name(folder.name + ".migrated")
    if not folder.exists() and migrated.is_dir():
        return f"nothing to migrate: {folder} was migrated already, and kept as {migrated}"
    return (
        f"nothing to migrate: {folder} holds no Parquet store (no *.parquet files); "
        "name the old store's folder with --from PATH"
    )


@contextmanager
def _unreadable(folder: Path) -> Iterator[None]:
    """A Parquet file that cannot be read (pyarrow's ArrowInvalid is a ValueError)."""
    from pipeline.store import StoreError

    try:
        yield
    except (OSError, ValueError) as err:
        raise StoreError(f"cannot read the Parquet store {folder}: {err}") from err


def cmd_backtest(args: argparse.Namespace) -> None:
    import numpy as np

    from pipeline.backtest import BacktestSpec, load_ltsf_csv, run_backtest
    from pipeline.config import MlflowSettings

    spec = BacktestSpec(
        features=args.features,
        lookback=args.lookback,
        horizon=args.horizon,
        model=args.model,
        seed=args.seed,
        target=args.target,
        train_overrides={} if args.max_steps is None else {"max_steps": args.max_steps},
    )
    result = run_backtest(load_ltsf_csv(args.data), args.data.stem, spec)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "predictions.npy", result.predictions)
    (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    settings = MlflowSettings()
    if "mlflow_tracking_uri" in settings.model_fields_set:  # logged only where asked for
        _log_backtest(settings, result.metrics, args.out)
    print(json.dumps({k: result.metrics[k] for k in ("mse", "mae", "lookback", "horizon")}))


def _log_backtest(settings: MlflowSettings, metrics: dict[str, object], out: Path) -> None:
    from pipeline import runs
    from pipeline.config import StoreSettings
    from pipeline.tracking import connect

    run_id = runs.log_backtest(connect(settings, StoreSettings()), metrics, out)
    print(f"logged to MLflow run {run_id} at {settings.mlflow_tracking_uri}")


def cmd_register(args: argparse.Namespace) -> None:
    from pipeline import registry, runs
    from pipeline.config import MlflowSettings, StoreSettings
    from pipeline.model import load_checkpoint
    from pipeline.tracking import connect

    settings = MlflowSettings()
    model = load_checkpoint(args.checkpoint)
    tracking = connect(settings, StoreSettings())
    version = runs.register_checkpoint(tracking, model, str(args.checkpoint))
    if args.promote:
        registry.promote(tracking, version)
    print(f"registered {settings.model_name} version {version}")


def cmd_serve(args: argparse.Namespace) -> None:
    from pipeline.config import MlflowSettings, RecordSettings, ServeSettings, StoreSettings
    from pipeline.kafka_io import KafkaTransport
    from pipeline.wiring import serve_from_settings

    transport = KafkaTransport(KafkaSettings())
    serve = ServeSettings() if args.idle_s is None else ServeSettings(serve_idle_s=args.idle_s)
    stats, _ = serve_from_settings(
        transport, StoreSettings(), MlflowSettings(), serve, RecordSettings(), args.max_records
    )
    print(json.dumps(stats.as_dict()))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format=LOG_FORMAT)
    if args.verbose:
        logging.getLogger("pipeline").setLevel(logging.DEBUG)  # flows/__init__ set INFO
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # kafka-python warns when a network task takes over 0.1 s: a busy machine, not a fault.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    try:
        args.handler(args)
    except RollcastError as err:
        print(f"rollcast: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
