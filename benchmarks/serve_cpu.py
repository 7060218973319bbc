"""Serve CPU per record against a forecast-sized pass-through, interleaved in one process.

    python benchmarks/serve_cpu.py                          # about 2 minutes on a 2-core VM
    python benchmarks/serve_cpu.py --format v2 --intervals  # version-2 messages with intervals
    python benchmarks/serve_cpu.py --shape default          # the default model (lookback 720)
    python benchmarks/serve_cpu.py --json                   # the figures as JSON, on the last line
    python benchmarks/serve_cpu.py --results benchmarks/results/serve-cpu.jsonl   # and a row
    benchmarks/serve_cpu_ab.sh REV [ROUNDS] [options...]    # REV's loop and this one, alternately

What it measures, in this process pinned to one core (``--core``) with one torch thread, against
the embedded broker (started before the pinning, so it is not held to that core):

* per round (``--rounds``), over ``--records-per-round`` fresh records each, one after the other:
  (a) a pass-through: a consumer→producer that sends, for every observation it polls, one
  message the size of a forecast (the bytes and headers of a real forecast this serve loop
  published, read back once before the rounds), with the serve loop's batching (poll, send
  all, flush, commit); (b) the serve loop (:func:`pipeline.serve.run_serve` with the Kafka
  source and sink), every record making a forecast (windows warmed first, untimed);
* for each, the CPU seconds of the whole process (``time.process_time()``: kafka-python's
  sender and heartbeat threads included, the broker not) per record, in µs; per round, their
  medians and the ratio pass-through µs / serve µs (1.0: the loop costs no more than moving a
  forecast through Kafka);
* per-record latency at half of the serve rate (wall clock, the rounds' median): a second
  process produces, and each record's latency runs from its produce timestamp to the broker's
  ack of its forecast (``ServeStats.record_latency``); and the batches' (skipped with
  ``--latency-s 0``).

Every record to be timed is produced before the first round, by this process (untimed). With
the defaults (1,000 series, 5 rounds of 20,000 records, the issue-4 model) a run takes about
2 minutes: producing about 200,000 records, the warm-up, the rounds, 20 s of latency. With
``--shape default`` the warm-up is 720,000 records (a few minutes more).

The rounds interleave the two so that a machine's load swings reach both alike; the A/B script
runs this at two commits alternately (this checkout's benchmark scripts, REV's ``pipeline``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch
from results import add_results_option, append_if_asked
from serve import (
    MAX_POLL_RECORDS,
    ServeBench,
    forecaster,
    latency_at,
    produce_steps,
    transport_latency,
)

from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings
from pipeline.forecast import LoadedForecaster
from pipeline.kafka_io import KafkaTransport
from pipeline.serve import RollingForecaster, new_stats, run_serve

logger = logging.getLogger("benchmarks.serve_cpu")

PASSTHROUGH_TOPIC = "passthrough"
MAX_SERIES = 100_000  # as ServeBench


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def model_for(args: argparse.Namespace) -> LoadedForecaster:
    """serve.py's LSTM of ``--shape``; with ``--intervals``, calibrated radii of 1 spread."""
    loaded = forecaster("lstm", args.shape)
    if args.intervals:
        from pipeline.intervals import Calibration

        config = loaded.model.config
        levels = tuple(config.interval_levels)
        radius = np.ones((len(levels), config.horizon, len(config.target_names)))
        loaded.model.calibrate_intervals(Calibration(levels, radius))
    return loaded


def rolling_forecaster(model: LoadedForecaster, message: str, precision: str) -> RollingForecaster:
    """ServeBench's forecaster, in the message format ``message`` and the arithmetic
    ``precision``; each is passed only where this commit's RollingForecaster takes it (an old
    one writes v1 in float32)."""
    takes = inspect.signature(RollingForecaster).parameters
    options: dict[str, Any] = {"message": message} if "message" in takes else {}
    if precision != "float32":
        if "precision" not in takes:
            raise SystemExit("this pipeline's RollingForecaster has no precision=")
        from pipeline.forecast import resolve_precision

        options["precision"] = resolve_precision(precision, torch.device("cpu"))
    return RollingForecaster(model, max_series=MAX_SERIES, **options)


def check_format(message: str) -> None:
    """Stop at once if this pipeline (an older commit's, say) cannot write ``message``."""
    if message != "v1" and "message" not in inspect.signature(RollingForecaster).parameters:
        raise SystemExit(f"this pipeline's RollingForecaster has no message=: no {message}")


class CpuBench(ServeBench):
    """serve.py's ServeBench in ``--format``; :meth:`measure` adds the CPU time."""

    def __init__(
        self, kafka: KafkaSettings, model: LoadedForecaster, message: str, precision: str
    ) -> None:
        super().__init__(kafka, model)
        self.rolling = rolling_forecaster(model, message, precision)
        self.stats = new_stats(self.rolling)

    def cap_batches(self, batch_ms: float | None) -> None:
        """Publish a poll's forecasts at least every ``batch_ms`` (None: the loop's default)."""
        if batch_ms is None:
            return
        if "cap" not in inspect.signature(run_serve).parameters:
            raise SystemExit("this pipeline's run_serve takes no batch cap")
        from pipeline.serve import BatchCap

        self.options["cap"] = BatchCap(seconds=batch_ms / 1000)

    def measure(self, records: int) -> dict[str, float]:
        """Serve ``records`` more (to the poll that reaches them): CPU µs and wall s."""
        served, made = self.stats.records_in, self.stats.forecasts_out
        cpu = time.process_time()
        wall = self.run_until(served + records)
        cpu = time.process_time() - cpu
        served, made = self.stats.records_in - served, self.stats.forecasts_out - made
        return {"records": served, "forecasts": made, "cpu_s": cpu, "wall_s": wall}


class ForecastSizedPassthrough:
    """For every observation polled, one forecast's bytes out: the serve loop's I/O alone."""

    def __init__(self, kafka: KafkaSettings, value: bytes, headers: list | None) -> None:
        transport = KafkaTransport(kafka)
        self.source = transport.source(kafka.topic_observations, "bench-cpu-pass", MAX_POLL_RECORDS)
        self.publisher = transport.sink()
        self.value, self.headers = value, headers

    def forward(self, timeout_s: float) -> int:
        """One batch, with the serve loop's batching: poll, send all, flush, commit."""
        records = self.source.poll(timeout_s)
        for record in records:
            self.publisher.send_raw(PASSTHROUGH_TOPIC, record.key, self.value, self.headers)
        self.publisher.flush()
        self.source.commit(records)
        return len(records)

    def measure(self, records: int) -> dict[str, float]:
        done, cpu, wall = 0, time.process_time(), time.perf_counter()
        while done < records:
            done += self.forward(0.5)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return {"records": done, "cpu_s": cpu, "wall_s": wall}

    def close(self) -> None:
        self.source.close()
        self.publisher.close()


def sample_forecast(kafka: KafkaSettings, timeout_s: float = 60.0) -> tuple[bytes, list | None]:
    """The value and headers of the first forecast on the forecasts topic (the warm-up's)."""
    source = KafkaTransport(kafka).source(kafka.topic_forecasts, "bench-cpu-sample", 1)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for record in source.poll(0.5):
                if record.value:
                    headers = list(getattr(record, "headers", ()) or ()) or None
                    return record.value, headers
    finally:
        source.close()
    raise RuntimeError(f"no forecast on {kafka.topic_forecasts} within {timeout_s:.0f} s")


def us_per_record(phase: dict[str, float]) -> float:
    return phase["cpu_s"] / phase["records"] * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_format(args.format)
    torch.set_num_threads(1)
    with EmbeddedBroker() as broker:
        pin(args.core)  # after the broker started: it is not held to this core
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        transport = KafkaTransport(kafka)
        transport.create_topics([*transport.topics.all(), PASSTHROUGH_TOPIC], args.partitions)
        model = model_for(args)
        lookback, per_round = model.model.config.lookback, args.records_per_round
        warm = lookback * args.series
        # Each phase may read one poll past its count: room for that, for every round.
        timed_steps = math.ceil(args.rounds * (per_round + MAX_POLL_RECORDS) / args.series)
        steps = lookback + timed_steps + 1
        logger.info("producing %d records", steps * args.series)
        produce_steps(kafka, args.series, range(steps))
        bench = CpuBench(kafka, model, args.format, args.precision)
        bench.cap_batches(args.batch_ms)
        passthrough = None
        try:
            bench.run_until(warm)
            value, headers = sample_forecast(kafka)
            if args.intervals and args.format == "v2" and b'"intervals"' not in value:
                raise RuntimeError("asked for intervals, but the forecasts carry none")
            passthrough = ForecastSizedPassthrough(kafka, value, headers)
            passthrough.measure(min(per_round, warm))  # joins its group; untimed
            rounds = []
            for number in range(1, args.rounds + 1):
                through, served = passthrough.measure(per_round), bench.measure(per_round)
                rounds.append(round_figures(through, served))
                logger.info("round %d: %s", number, rounds[-1])
            serve_rps = statistics.median(r["serve_rps"] for r in rounds)
            bench.run_until(steps * args.series)  # the rest: no backlog at the latency phase
            latency = {}
            if args.latency_s > 0:
                latency = latency_at(bench, serve_rps / 2, args, first_step=steps)
            if args.latency_s > 0 and args.floor:
                after = steps + math.ceil(serve_rps * (args.latency_s + 4) / args.series) + 1
                latency.update(transport_latency(kafka, serve_rps / 2, args, after))
        finally:
            bench.close()
            if passthrough is not None:
                passthrough.close()
    return figures(args, rounds, latency, serve_rps, len(value))


def round_figures(through: dict[str, float], served: dict[str, float]) -> dict[str, Any]:
    passthrough_us, serve_us = us_per_record(through), us_per_record(served)
    return {
        "passthrough_us": round(passthrough_us, 2),
        "serve_us": round(serve_us, 2),
        "ratio": round(passthrough_us / serve_us, 3),
        "passthrough_rps": round(through["records"] / through["wall_s"]),
        "serve_rps": round(served["records"] / served["wall_s"]),
        "forecasts_per_record": round(served["forecasts"] / served["records"], 3),
    }


def figures(args: argparse.Namespace, rounds: list[dict[str, Any]], latency: dict,
            serve_rps: float, forecast_bytes: int) -> dict[str, Any]:  # fmt: skip
    passthrough_us = statistics.median(r["passthrough_us"] for r in rounds)
    serve_us = statistics.median(r["serve_us"] for r in rounds)
    return {
        "passthrough_us": round(passthrough_us, 2),
        "serve_us": round(serve_us, 2),
        "ratio": round(passthrough_us / serve_us, 3),
        "serve_rps": round(serve_rps),
        "forecasts_per_record": min(r["forecasts_per_record"] for r in rounds),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in latency.items()},
        "half_load_rps": round(serve_rps / 2) if latency else None,
        "rounds": rounds,
        "records_per_round": args.records_per_round,
        "format": args.format,
        "intervals": args.intervals,
        "precision": args.precision,
        "batch_ms": args.batch_ms,
        "forecast_bytes": forecast_bytes,
        "shape": args.shape,
        "series": args.series,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records-per-round", type=int, default=20_000)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--shape", choices=["issue4", "default"], default="issue4")
    parser.add_argument("--format", choices=["v1", "v2"], default="v2", help="forecast messages")
    parser.add_argument("--intervals", action="store_true", help="calibrated intervals (v2 only)")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "auto"], default="float32")
    parser.add_argument("--batch-ms", type=float, help="the loop's time cap on a batch")
    parser.add_argument("--floor", action="store_true", help="and the pass-through's latency")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--latency-s", type=float, default=20.0, help="0: no latency phase")
    parser.add_argument("--core", type=int, default=0, help="the core this process runs on")
    parser.add_argument("--json", action="store_true")
    add_results_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("kafka", "pipeline.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    result = run(args)
    for name, value in result.items():
        if name != "rounds":
            print(f"{name:>22}  {value}")
    for number, figures_of_round in enumerate(result["rounds"], start=1):
        print(f"{'round ' + str(number):>22}  {figures_of_round}")
    if args.json:
        print(json.dumps(result))
    append_if_asked(args, "serve_cpu", result)


if __name__ == "__main__":
    main()
