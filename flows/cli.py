"""The ``rollcast`` command: an entry point of the app, beside the flows it runs.

Every command reads its settings from ``ROLLCAST_*`` environment variables once (see
pipeline/config.py), applies the options below over a few, and passes the settings down.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from pipeline import RollcastError
from pipeline.config import KafkaSettings, Settings

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.config import MlflowSettings

logger = logging.getLogger("flows.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Client libraries that are chatty at INFO.
QUIET_LOGGERS = ("kafka", "alembic", "mlflow", "httpx", "urllib3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollcast", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_services, add_producers, add_stages, add_model_commands):
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

    tie_temporary_server()

    print(json.dumps(train_flow(max_steps=args.max_steps, tuned_config=args.tuned)))


def cmd_tune(args: argparse.Namespace) -> None:
    from flows.prefect_server import tie_temporary_server
    from flows.tune import tune_flow

    tie_temporary_server()

    tuned = tune_flow(
        trials=args.trials, timeout_s=args.timeout_s, trial_timeout_s=args.trial_timeout_s
    )
    print(json.dumps(tuned))


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
