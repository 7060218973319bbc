"""The ``rollcast`` command: an entry point of the app, beside the flows it runs.

Every command reads its settings from ``ROLLCAST_*`` environment variables once (see
pipeline/config.py), applies the options below over a few, and passes the settings down.

Only the standard library and the ``pipeline`` package's error classes are imported here: the
heavy libraries (torch, pandas, MLflow, Prefect, deltalake) are imported by the command that
needs them, after its settings are read, so ``--help`` and a wrong setting answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import signal
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import pipeline
from flows import require_log_level
from pipeline import ConfigurationError, OutageError, ResourceError, RollcastError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import MlflowSettings, Settings, StoreSettings
    from pipeline.store import StoreInfo

logger = logging.getLogger("flows.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Client libraries that are chatty at INFO.
# Libraries' INFO lines (connections, migrations, requests); MLflow's own level is set by
# MLFLOW_LOGGING_LEVEL (flows/__init__), as MLflow resets it when imported.
QUIET_LOGGERS = ("kafka", "alembic", "httpx", "urllib3")
DISTRIBUTION = "rollcast"  # pyproject.toml's project name: where --version is read from
DESCRIPTION = (
    "Rollcast: Kafka streams of observations in, rolling multi-step forecasts out.\n"
    "Settings come from ROLLCAST_* environment variables: each command's --help lists the ones "
    "it reads."
)
EXIT_CODES_HELP = f"""\
exit codes:
  {pipeline.EXIT_OK:<3} done
  {pipeline.EXIT_BUG:<3} an unexpected error, with its traceback: a bug to report
  {pipeline.EXIT_OPERATOR:<3} an operator must act: a setting, a file passed in, a missing resource
  {pipeline.EXIT_USAGE:<3} the command line is wrong (sysexits EX_USAGE)
  {pipeline.EXIT_OUTAGE:<3} a service (broker, registry, object store, Prefect API) did not
      answer: try again later (sysexits EX_TEMPFAIL)

ROLLCAST_LOG_LEVEL (default INFO) sets the level of Rollcast's own log lines."""
# What each kind of command reads, by pipeline/config.py class name; --help lists their fields.
STAGE_SETTINGS = {
    "kafka": ("KafkaSettings",),
    "ingest": ("KafkaSettings", "StoreSettings", "IngestSettings", "RecordSettings"),
    "training": (
        "StoreSettings",
        "MlflowSettings",
        "ModelSettings",
        "TrainSettings",
        "RecordSettings",
    ),
    "serve": (
        "KafkaSettings",
        "StoreSettings",
        "MlflowSettings",
        "ServeSettings",
        "RecordSettings",
    ),
    "store": ("StoreSettings",),
    "registry": ("MlflowSettings", "StoreSettings"),
}
STAGE_SETTINGS["demo"] = tuple(
    dict.fromkeys(STAGE_SETTINGS["ingest"] + STAGE_SETTINGS["training"] + STAGE_SETTINGS["serve"])
)


class CommandParser(argparse.ArgumentParser):
    """argparse with Rollcast's exit code for a wrong command line, and a help that ends with
    the ``ROLLCAST_*`` variables the command reads (``reads``: settings class names)."""

    def __init__(self, *args: Any, reads: Sequence[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.reads = tuple(reads)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(pipeline.EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def format_help(self) -> str:
        # Filled in only when asked: the field lists import pipeline.config (and torch with it).
        if self.reads and self.epilog is None:
            self.epilog = variables_help(self.reads)
        return super().format_help()


def variables_help(class_names: Sequence[str]) -> str:
    """The ``ROLLCAST_*`` variables of these settings classes, as a help epilog."""
    from pipeline import config

    lines = ["environment variables read (pipeline/config.py):"]
    width = min(shutil.get_terminal_size().columns, 100) - 2  # as argparse wraps its help
    for name in class_names:
        settings_class = getattr(config, name)
        variables = " ".join(
            config.ENV_PREFIX + field.upper() for field in settings_class.model_fields
        )
        label = name.removesuffix("Settings").lower() + ":"
        lines.append(
            textwrap.fill(
                variables, width, initial_indent=f"  {label:<9} ", subsequent_indent=" " * 12
            )
        )
    return "\n".join(lines)


def build_parser() -> CommandParser:
    parser = CommandParser(prog="rollcast", description=DESCRIPTION, epilog=EXIT_CODES_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_demo, add_services, add_producers, add_stages, add_store, add_model_commands):
        add(commands)
    return parser


def installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


Commands: TypeAlias = "argparse._SubParsersAction[CommandParser]"


def add_demo(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo", help="run the whole path on the embedded default", reads=STAGE_SETTINGS["demo"]
    )
    demo.add_argument("--series", type=int, default=8, help="synthetic series (default 8)")
    demo.add_argument(
        "--records",
        type=int,
        help="records in all (default: 16000 synthetic ones, or every row of --data)",
    )
    demo.add_argument("--data", type=Path, help="replay this CSV instead of the synthetic fleet")
    demo.add_argument("--max-steps", type=int, default=300, help="training steps (default 300)")
    demo.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    demo.set_defaults(handler=cmd_demo)


def add_services(commands: Commands) -> None:
    broker = commands.add_parser(
        "broker", help="start the embedded broker and block", reads=STAGE_SETTINGS["kafka"]
    )
    broker.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    broker.set_defaults(handler=cmd_broker)
    stack = commands.add_parser(
        "stack",
        help="run MLflow and Prefect servers on PostgreSQL (ROLLCAST_POSTGRES_URL)",
        reads=("StackSettings", "StoreSettings"),
    )
    stack.set_defaults(handler=cmd_stack)


def add_producers(commands: Commands) -> None:
    kafka = STAGE_SETTINGS["kafka"]
    replay = commands.add_parser("replay", help="produce a CSV's rows as observations", reads=kafka)
    replay.add_argument("csv", type=Path, help="CSV: a date column, numbers")
    replay.add_argument("--series-id", help="series id (default: the file name)")
    replay.add_argument("--limit", type=int, help="rows to send (default: all)")
    replay.set_defaults(handler=cmd_replay)
    synth = commands.add_parser("synth", help="produce the synthetic sensor fleet", reads=kafka)
    synth.add_argument("--series", type=int, default=8, help="series (default 8)")
    synth.add_argument("--records", type=int, default=16_000, help="records in all (default 16000)")
    synth.set_defaults(handler=cmd_synth)


def add_stages(commands: Commands) -> None:
    ingest = commands.add_parser(
        "ingest", help="run the ingest flow once", reads=STAGE_SETTINGS["ingest"]
    )
    ingest.add_argument("--max-records", type=int, help="stop after this many records")
    ingest.set_defaults(handler=cmd_ingest)
    train = commands.add_parser(
        "train", help="run the train flow once", reads=STAGE_SETTINGS["training"]
    )
    train.add_argument("--max-steps", type=int, help="optimizer steps at most")
    train.add_argument("--tuned", type=Path, help="a tuned config written by `rollcast tune`")
    train.add_argument(
        "--as-of",
        type=_count,
        metavar="VERSION",
        help="train on this version of the series table (see `rollcast store info`)",
    )
    train.set_defaults(handler=cmd_train)
    add_tune(commands)
    serve = commands.add_parser(
        "serve", help="serve forecasts until stopped", reads=STAGE_SETTINGS["serve"]
    )
    serve.add_argument("--max-records", type=int, help="stop after this many records")
    serve.add_argument("--idle-s", type=float, help="stop after this long without records")
    serve.set_defaults(handler=cmd_serve)


def add_tune(commands: Commands) -> None:
    tune = commands.add_parser(
        "tune",
        help="search shapes and training settings on the store's validation windows",
        reads=STAGE_SETTINGS["training"],
    )
    tune.add_argument("--trials", type=int, help="trials at most (default 20)")
    tune.add_argument("--timeout-s", type=float, help="stop starting trials after this long")
    tune.add_argument(
        "--trial-timeout-s", type=float, help="stop a candidate (not the defaults) after this long"
    )
    tune.set_defaults(handler=cmd_tune)


def add_store(commands: Commands) -> None:
    reads = STAGE_SETTINGS["store"]
    store = commands.add_parser("store", help="the series table: info, compact, migrate")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser(
        "info", help="where the table is, its version, rows, files, bytes", reads=reads
    )
    info.add_argument("--json", action="store_true", help="print it as one JSON line")
    info.set_defaults(handler=cmd_store_info)
    compact = actions.add_parser(
        "compact",
        help="drop repeated rows, merge small files, delete old ones (a flow run)",
        reads=reads,
    )
    compact.add_argument(
        "--retention-hours",
        type=_hours,
        help="keep the files versions this recent need (default: ROLLCAST_STORE_RETENTION_HOURS)",
    )
    compact.add_argument("--json", action="store_true", help="print the report as one JSON line")
    compact.set_defaults(handler=cmd_store_compact)
    migrate = actions.add_parser(
        "migrate",
        help="append the rows of a one-Parquet-file-per-series store to the table",
        reads=reads,
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
    backtest = commands.add_parser(
        "backtest",
        help="run the LTSF benchmark protocol on a CSV",
        reads=STAGE_SETTINGS["registry"],
    )
    backtest.add_argument("--data", type=Path, required=True, help="CSV: a date column, numbers")
    backtest.add_argument(
        "--features",
        choices=["M", "S", "MS"],
        default="M",
        help="M: every column in, every column out; S: --target only; MS: every column in, "
        "--target out (default M)",
    )
    backtest.add_argument("--horizon", type=int, default=96, help="steps ahead (default 96)")
    backtest.add_argument("--lookback", type=int, help="default: the model's, cut to the data")
    backtest.add_argument(
        "--model", default="lstm", help="lstm, dlinear, repeat_last, seasonal_naive"
    )
    backtest.add_argument("--target", default="OT", help="the S setting's column (default OT)")
    backtest.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    backtest.add_argument("--max-steps", type=int, help="override the training step budget")
    backtest.add_argument(
        "--ensemble",
        type=_ensemble_size,
        default=1,
        help="seeds whose forecasts are averaged, or 'auto': 3 seeds, averaged only where that "
        "beats one seed on validation (default 1: one training)",
    )
    backtest.add_argument(
        "--val-folds",
        type=_fold_count,
        help="validation blocks spread over the latest training rows, 1-64 (default: 1 on "
        "the ETT files' published borders, 4 elsewhere)",
    )
    backtest.add_argument(
        "--season", type=int, help="seasonal-naive's period in steps (default: chosen from data)"
    )
    backtest.add_argument(
        "--max-gap", type=int, help="interpolate gaps of up to this many steps (default 3)"
    )
    backtest.add_argument(
        "--levels",
        type=_levels,
        default=None,
        help="interval coverage levels, comma-separated (default 0.8,0.95); intervals.npz holds "
        "their bounds",
    )
    backtest.add_argument(
        "--interval-gain",
        type=float,
        default=None,
        help="the intervals' online adaptation step, a share of the calibrated half-width "
        "(default 0.05; 0: split conformal alone)",
    )
    backtest.add_argument(
        "--calendar",
        action="store_true",
        help="give the LSTM the calendar features of its lookback and horizon",
    )
    backtest.add_argument(
        "--holidays", help="a public-holiday region for the calendar, e.g. GB or AU-VIC"
    )
    backtest.add_argument("--timezone", help="the IANA zone the calendar is read in (UTC)")
    backtest.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    backtest.set_defaults(handler=cmd_backtest)
    register = commands.add_parser(
        "register",
        help="register a checkpoint trained elsewhere as a new model version",
        reads=STAGE_SETTINGS["registry"],
    )
    register.add_argument("checkpoint", type=Path, help="a .pt file written by Rollcast")
    register.add_argument("--promote", action="store_true", help="make it the champion")
    register.set_defaults(handler=cmd_register)


def cmd_demo(args: argparse.Namespace) -> None:
    from pipeline.config import Settings

    settings = Settings()  # a wrong setting stops here, before the heavy imports
    from flows.demo import DemoOptions, run_demo, summary_dict

    options = DemoOptions(args.series, args.records, args.data, args.max_steps)
    summary = run_demo(options, settings)
    print("\nRollcast demo\n" + "\n".join("  " + line for line in summary.lines()))
    if args.json:
        print(json.dumps(summary_dict(summary)))


def cmd_broker(args: argparse.Namespace) -> None:
    from pipeline.config import KafkaSettings

    settings = KafkaSettings()
    from pipeline.broker import EmbeddedBroker
    from pipeline.kafka_io import KafkaTransport

    with EmbeddedBroker(port=args.port) as broker:
        kafka = settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        transport = KafkaTransport(kafka)
        transport.create_topics(transport.topics.all(), kafka.topic_partitions)
        print(f"export ROLLCAST_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
        print("embedded broker running (memory storage); Ctrl-C stops it", flush=True)
        _block_until_signal()


def cmd_stack(args: argparse.Namespace) -> None:
    from pipeline.config import StackSettings, StoreSettings

    stack_settings, root = StackSettings(), StoreSettings().data_dir / "stack"
    from flows.stack import Stack

    with Stack(stack_settings, root) as stack:
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
    from pipeline.config import KafkaSettings

    kafka = KafkaSettings()
    from pipeline.datasets import frame_to_observations
    from pipeline.kafka_io import KafkaTransport
    from pipeline.transport import replay

    sink = KafkaTransport(kafka).sink()  # fails fast, before the data is built
    try:
        frame = frame_source()
        sent = replay(sink, frame_to_observations(frame), total=len(frame))
    finally:
        sink.close()
    print(f"produced {sent} observations")


def cmd_replay(args: argparse.Namespace) -> None:
    def rows() -> pd.DataFrame:
        from pipeline.datasets import load_csv

        return load_csv(args.csv, args.series_id).head(args.limit or None)

    _produce(rows)


def cmd_synth(args: argparse.Namespace) -> None:
    def fleet() -> pd.DataFrame:
        from pipeline.datasets import FleetSpec, synthetic_fleet

        per_series = max(1, args.records // args.series)
        return synthetic_fleet(FleetSpec(n_series=args.series, n_steps=per_series))

    _produce(fleet)


def cmd_ingest(args: argparse.Namespace) -> None:
    from pipeline.config import Settings

    settings = Settings()
    from pipeline.kafka_io import KafkaTransport

    KafkaTransport(settings.kafka)  # says how to start a broker before Prefect starts
    from flows.ingest import ingest_flow
    from flows.prefect_server import tie_temporary_server

    tie_temporary_server()

    print(json.dumps(ingest_flow(max_records=args.max_records, settings=settings)))


def cmd_train(args: argparse.Namespace) -> None:
    from pipeline.config import Settings

    settings = Settings() if args.as_of is None else settings_as_of(Settings(), args.as_of)
    from flows.prefect_server import tie_temporary_server
    from flows.train import train_flow

    tie_temporary_server()

    reading = "the series table" if args.as_of is None else f"version {args.as_of} of the table"
    with table_errors(f"cannot read {reading}", vacuumed=args.as_of is not None):
        trained = train_flow(max_steps=args.max_steps, tuned_config=args.tuned, settings=settings)
    print(json.dumps(trained))


def settings_as_of(settings: Settings, version: int) -> Settings:
    """``settings`` with training pinned to ``version`` of the series table, which must exist."""
    require_version(settings.store, version)
    train = settings.train.model_copy(update={"data_version": version})
    return settings.model_copy(update={"train": train})


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
    from pipeline.config import Settings

    settings = Settings()
    from flows.prefect_server import tie_temporary_server
    from flows.tune import tune_flow

    tie_temporary_server()

    tuned = tune_flow(
        trials=args.trials,
        timeout_s=args.timeout_s,
        trial_timeout_s=args.trial_timeout_s,
        settings=settings,
    )
    print(json.dumps(tuned))


def cmd_store_info(args: argparse.Namespace) -> None:
    from pipeline.config import StoreSettings

    settings = StoreSettings()
    from pipeline.wiring import open_store

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
    from pipeline.config import Settings

    settings = Settings()
    store = settings.store
    from flows.maintenance import compact_flow
    from flows.prefect_server import tie_temporary_server

    tie_temporary_server()

    with table_errors(f"cannot compact the series table {store.table_uri}"):
        report = compact_flow(retention_hours=args.retention_hours, settings=settings)
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

    settings = StoreSettings()
    from pipeline.delta_store import DeltaSeriesStore
    from pipeline.maintenance import migrate_parquet
    from pipeline.store import StoreError

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


def _calendar_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The backtest's calendar options as model overrides (a region or zone asks for it)."""
    asked = {"holidays": args.holidays, "timezone": args.timezone}
    overrides: dict[str, object] = {k: v for k, v in asked.items() if v is not None}
    if args.calendar or overrides:
        from pipeline.covariates import CalendarError, check_calendar

        try:
            check_calendar(args.holidays, args.timezone or "UTC")
        except CalendarError as err:
            raise ConfigurationError(str(err)) from err
        overrides["calendar"] = True
    return overrides


def cmd_backtest(args: argparse.Namespace) -> None:
    from pipeline.config import MlflowSettings, StoreSettings

    settings = MlflowSettings()
    # Logged only where asked for; the store settings say where a local run's artifacts go.
    tracked = StoreSettings() if "mlflow_tracking_uri" in settings.model_fields_set else None
    import numpy as np

    from pipeline.backtest import BacktestSpec, load_ltsf_csv, run_backtest

    spec = BacktestSpec(
        features=args.features,
        lookback=args.lookback,
        horizon=args.horizon,
        model=args.model,
        seed=args.seed,
        target=args.target,
        train_overrides={} if args.max_steps is None else {"max_steps": args.max_steps},
        model_overrides=_calendar_overrides(args),
        season=args.season,
        ensemble=args.ensemble,
        val_folds=args.val_folds,
        **({} if args.max_gap is None else {"max_gap": args.max_gap}),
        **({} if args.levels is None else {"levels": args.levels}),
        **({} if args.interval_gain is None else {"interval_gain": args.interval_gain}),
    )
    result = run_backtest(load_ltsf_csv(args.data), args.data.stem, spec)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "predictions.npy", result.predictions)
    if result.intervals is not None:
        bounds = result.intervals
        np.savez(args.out / "intervals.npz", levels=bounds.levels, lo=bounds.lo, hi=bounds.hi)
    (args.out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    if tracked is not None:
        _log_backtest(settings, tracked, result.metrics, args.out)
    print(json.dumps({k: result.metrics[k] for k in ("mse", "mae", "lookback", "horizon")}))


def _levels(text: str) -> tuple[float, ...]:
    """``--levels``: comma-separated coverage levels (the backtest checks each is in (0, 1))."""
    try:
        return tuple(float(level) for level in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels such as 0.8,0.95, not {text!r}") from None


def _fold_count(text: str) -> int:
    """``--val-folds``: a number of validation blocks (the backtest checks the range)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a number of folds >= 1, not {text!r}")
    return int(text)


def _ensemble_size(text: str) -> int | str:
    """``--ensemble``: a number of seeds >= 1, or "auto"."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a number of seeds >= 1 or 'auto', not {text!r}")
    return int(text)


def _log_backtest(
    settings: MlflowSettings, store: StoreSettings, metrics: dict[str, object], out: Path
) -> None:
    from pipeline import runs
    from pipeline.tracking import connect

    run_id = runs.log_backtest(connect(settings, store), metrics, out)
    print(f"logged to MLflow run {run_id} at {settings.mlflow_tracking_uri}")


def cmd_register(args: argparse.Namespace) -> None:
    from pipeline.config import MlflowSettings, StoreSettings

    settings, store = MlflowSettings(), StoreSettings()
    from pipeline import registry, runs
    from pipeline.model import load_checkpoint
    from pipeline.tracking import connect

    model = load_checkpoint(args.checkpoint)
    tracking = connect(settings, store)
    version = runs.register_checkpoint(tracking, model, str(args.checkpoint))
    if args.promote:
        registry.promote(tracking, version)
    print(f"registered {settings.model_name} version {version}")


def cmd_serve(args: argparse.Namespace) -> None:
    from pipeline.config import (
        KafkaSettings,
        MlflowSettings,
        RecordSettings,
        ServeSettings,
        StoreSettings,
    )

    kafka, store, mlflow_settings, records = (
        KafkaSettings(),
        StoreSettings(),
        MlflowSettings(),
        RecordSettings(),
    )
    serve = ServeSettings() if args.idle_s is None else ServeSettings(serve_idle_s=args.idle_s)
    from pipeline.kafka_io import KafkaTransport

    transport = KafkaTransport(kafka)  # says how to start a broker before the model loads
    from pipeline.wiring import serve_from_settings

    stats, _ = serve_from_settings(
        transport, store, mlflow_settings, serve, records, args.max_records
    )
    print(json.dumps(stats.as_dict()))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (README "Exit codes", ``rollcast --help``)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help and --version (0), a wrong command line (64)
        return stop.code if isinstance(stop.code, int) else pipeline.EXIT_USAGE
    configure_logging(args.verbose)
    try:
        require_log_level()
        args.handler(args)
    except Exception as err:
        return failed(err)
    return pipeline.EXIT_OK


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    if verbose:
        logging.getLogger("pipeline").setLevel(logging.DEBUG)  # flows/__init__ set INFO
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def failed(err: Exception) -> int:
    """Say why a command failed, on stderr; return its exit code.

    Rollcast's own errors are one line, ``rollcast: why``;
    anything else is a bug, shown with its traceback.
    """
    known = known_error(err)
    if known is None:
        traceback.print_exception(err)
        return pipeline.EXIT_BUG
    print(f"rollcast: {known}", file=sys.stderr)
    return exit_code(known)


def exit_code(err: RollcastError) -> int:
    """What the error asks of whoever runs the command: an operator, or patience.

    A missing broker address is both a configuration error and an outage: the operator's.
    """
    if isinstance(err, ConfigurationError | ResourceError):
        return pipeline.EXIT_OPERATOR
    if isinstance(err, OutageError):
        return pipeline.EXIT_OUTAGE
    return pipeline.EXIT_OPERATOR


def known_error(err: BaseException) -> RollcastError | None:
    """``err`` as one of Rollcast's errors, or None for a bug.

    Besides Rollcast's own (a refused ``ROLLCAST_*`` value is a ConfigurationError, raised
    by pipeline.config): Prefect's "Failed to reach API", a RuntimeError whose cause is the HTTP
    client's connection error. Prefect re-raises a task's or flow's own exception in the
    caller, so those need no unwrapping.
    """
    if isinstance(err, RollcastError):
        return err
    httpx = sys.modules.get("httpx")  # loaded by Prefect wherever its API was called
    if httpx is not None and isinstance(err.__cause__, httpx.TransportError):
        return OutageError(f"{err} ({err.__cause__}): is the Prefect API up? (PREFECT_API_URL)")
    return None


if __name__ == "__main__":
    sys.exit(main())
