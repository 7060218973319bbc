"""Serve throughput, latency and memory on the embedded broker, in one run (issue 4).

    python benchmarks/serve.py                 # about 5 minutes on a 2-core VM
    python benchmarks/serve.py --json          # the figures as one JSON object on the last line
    python benchmarks/serve.py --profile FILE  # and a pyinstrument profile of the timed phase
    python benchmarks/serve.py --results benchmarks/results/serve.jsonl   # and append them as a row

What it measures, all in this process, pinned to one core (``--core``) with one torch thread;
the broker and the load generator run beside it:

* (a) pass-through: a kafka-python consumer→producer forwarding every record unchanged, with the
  serve loop's batching (poll, send all, flush, commit);
* (b) the serve loop over the same records: 1,000 series, a 2-layer hidden-128 LSTM, lookback 96,
  horizon 24, every record making a forecast (the windows are warmed up first, untimed);
* RSS after 100k and after 1M records served;
* (c) per-record latency, from the input's produce timestamp to the broker's acknowledgement of
  its forecast, with a second process producing at half of rate (b); and, as the floor, the same
  latency for the pass-through at that rate (to the ack of the forwarded record).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results import add_results_option, append_if_asked

from pipeline.broker import EmbeddedBroker
from pipeline.config import KafkaSettings
from pipeline.forecast import LoadedForecaster
from pipeline.kafka_io import KafkaTransport
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.records import RawRecord
from pipeline.serve import RollingForecaster, freeze_heap, new_stats, run_serve
from pipeline.stats import LatencyRecorder, ServeStats
from pipeline.transport import Sink, Source

logger = logging.getLogger("benchmarks.serve")

STEP_MS = 3_600_000
# The issue-4 workload: its model's shape over Rollcast's defaults (ForecasterConfig) for the
# rest. `--shape default` measures the defaults themselves (lookback 720: a longer warm-up).
ISSUE4_SHAPE = {
    "lookback": 96,
    "horizon": 24,
    "hidden_size": 128,
    "num_layers": 2,
    "segment_len": 24,
}
MAX_POLL_RECORDS = 2000


def observation(series: int, step: int) -> tuple[bytes, bytes]:
    key = f"sensor-{series:04d}"
    value = np.sin(step * 2 * np.pi / 24) + 0.01 * series
    text = f'{{"series":"{key}","ts":{step * STEP_MS},"values":{{"value":{value:.5f}}}}}'
    return key.encode(), text.encode()


def produce_steps(kafka: KafkaSettings, n_series: int, steps: range) -> int:
    publisher = KafkaTransport(kafka).sink()
    try:
        sent = 0
        for step in steps:
            for series in range(n_series):
                publisher.send_raw(kafka.topic_observations, *observation(series, step))
            sent += n_series
            if sent % 50_000 == 0:
                publisher.flush()
        publisher.flush()
        return sent
    finally:
        publisher.close()


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- (a) pass-through ------------------------------------------------------------------------


def forward_poll(source: Source, publisher: Sink, timeout_s: float) -> list[RawRecord]:
    """One pass-through batch, with the serve loop's batching: poll, send all, flush, commit."""
    records = source.poll(timeout_s)
    for record in records:
        publisher.send_raw("passthrough", record.key, record.value)
    publisher.flush()
    source.commit(records)
    return records


def passthrough_rate(kafka: KafkaSettings, warm: int, timed: int) -> float:
    """Forward every record unchanged; the rate over records ``warm .. warm + timed``."""
    transport = KafkaTransport(kafka)
    source = transport.source(kafka.topic_observations, "bench-passthrough", MAX_POLL_RECORDS)
    publisher = transport.sink()
    done, started = 0, 0.0
    try:
        while done < warm + timed:
            done += len(forward_poll(source, publisher, 0.5))
            if done >= warm and not started:
                started, done_at_start = time.perf_counter(), done
        return (done - done_at_start) / (time.perf_counter() - started)
    finally:
        source.close()
        publisher.close()


# --- (b) the serve loop ---------------------------------------------------------------------


def until(records: int) -> Callable[[ServeStats, bool], bool]:
    return lambda stats, idle: stats.records_in >= records


def forecaster(architecture: str, shape: str) -> LoadedForecaster:
    """The issue's model (2-layer LSTM, hidden 128) or Rollcast's default shape; or DLinear,
    whose cost is close to nothing, to show what the loop costs without the model."""
    overrides = ISSUE4_SHAPE if shape == "issue4" else {}
    config = ForecasterConfig(channels=("value",), architecture=architecture, **overrides)
    return LoadedForecaster("bench", "1", build_forecaster(config, seed=0).eval())


class ServeBench:
    def __init__(self, kafka: KafkaSettings, model: LoadedForecaster) -> None:
        self.kafka = kafka
        self.options: dict[str, Any] = {}  # more arguments of run_serve (a batch cap, say)
        self.rolling = RollingForecaster(model, max_series=100_000)
        self.stats = new_stats(self.rolling)
        transport = KafkaTransport(kafka)
        self.source = transport.source(kafka.topic_observations, "bench-serve", MAX_POLL_RECORDS)
        self.publisher = transport.sink()
        freeze_heap()  # as serve_from_settings does

    def run_until(self, records: int) -> float:
        """Serve until ``records`` are in; return the seconds it took."""
        started = time.perf_counter()
        run_serve(
            self.source, self.publisher, self.rolling, until(records), stats=self.stats,
            **self.options,
        )  # fmt: skip
        return time.perf_counter() - started

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        stop = lambda stats, idle: time.monotonic() >= deadline  # noqa: E731
        run_serve(self.source, self.publisher, self.rolling, stop, stats=self.stats, **self.options)

    def close(self) -> None:
        self.source.close()
        self.publisher.close()


# --- (c) latency at half load ---------------------------------------------------------------


def paced_producer(servers: str, topic: str, n_series: int, first_step: int, rate: float,
                   seconds: float, core: int) -> None:  # fmt: skip
    """In a child process: produce ``rate`` records/s, in 5 ms ticks, for ``seconds``."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    kafka = KafkaSettings(bootstrap_servers=servers, topic_observations=topic)
    publisher = KafkaTransport(kafka).sink()
    per_tick, tick_s = max(int(rate * 0.005), 1), 0.005
    step, series, started = first_step, 0, time.perf_counter()
    ticks = 0
    while time.perf_counter() - started < seconds:
        for _ in range(per_tick):
            publisher.send_raw(topic, *observation(series, step))
            series += 1
            if series == n_series:
                series, step = 0, step + 1
        publisher.flush()
        ticks += 1
        time.sleep(max(started + ticks * tick_s - time.perf_counter(), 0))
    publisher.close()


def start_producer(kafka: KafkaSettings, rate: float, args: argparse.Namespace, first_step: int,
                   seconds: float) -> multiprocessing.process.BaseProcess:  # fmt: skip
    child = multiprocessing.get_context("spawn").Process(
        target=paced_producer,
        args=(kafka.bootstrap_servers, kafka.topic_observations, args.series, first_step, rate,
              seconds, 1 - args.core),
    )  # fmt: skip
    child.start()
    return child


def transport_latency(kafka: KafkaSettings, rate: float, args: argparse.Namespace,
                      first_step: int) -> dict:  # fmt: skip
    """The floor: pass-through at the same rate, latency to the ack of the forwarded record."""
    transport = KafkaTransport(kafka)
    source = transport.source(kafka.topic_observations, "bench-floor", MAX_POLL_RECORDS)
    publisher = transport.sink()
    while not source.assigned():  # join the group, then skip what is already there
        source.commit(source.poll(0.5))
    while records := source.poll(0.5):
        source.commit(records)
    recorder = LatencyRecorder(keep=1_000_000)
    child = start_producer(kafka, rate, args, first_step, args.latency_s + 2)
    deadline, measure_from = time.monotonic() + args.latency_s + 2, time.monotonic() + 2
    try:
        while time.monotonic() < deadline:
            records = forward_poll(source, publisher, 0.1)
            if time.monotonic() >= measure_from:
                produced = np.array([r.timestamp_ms for r in records], np.float64)
                recorder.record((time.time() * 1000 - produced) / 1000)
    finally:
        child.join()
        source.close()
        publisher.close()
    return spread_ms(recorder, "floor_")


def latency_at(bench: ServeBench, rate: float, args: argparse.Namespace, first_step: int) -> dict:
    bench.stats.record_latency = LatencyRecorder(keep=1_000_000)
    child = start_producer(bench.kafka, rate, args, first_step, args.latency_s + 2)
    bench.run_for(2)  # the producer's start-up, not measured
    bench.stats.record_latency = LatencyRecorder(keep=1_000_000)
    bench.stats.batch_latency = LatencyRecorder()
    bench.run_for(args.latency_s)
    child.join()
    recorder, batches = bench.stats.record_latency, bench.stats.batch_latency
    return {
        "latency_records": recorder.count,
        **spread_ms(recorder),
        "batches": batches.count,
        **spread_ms(batches, "batch_"),
    }


def spread_ms(recorder: LatencyRecorder, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}p50_ms": recorder.quantile(0.5) * 1000,
        f"{prefix}p99_ms": recorder.quantile(0.99) * 1000,
        f"{prefix}max_ms": recorder.max_s * 1000,
    }


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    with EmbeddedBroker() as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        transport = KafkaTransport(kafka)
        transport.create_topics([*transport.topics.all(), "passthrough"], args.partitions)
        total_steps = args.records // args.series
        logger.info("producing %d records", args.series * total_steps)
        produce_steps(kafka, args.series, range(total_steps))
        lookback = forecaster(args.model, args.shape).model.config.lookback
        warm, timed = lookback * args.series, args.timed
        passthrough_rps = passthrough_rate(kafka, warm, timed)
        logger.info("pass-through: %.0f records/s", passthrough_rps)
        return serve_phases(kafka, args, warm, timed, passthrough_rps, total_steps)


def serve_phases(kafka: KafkaSettings, args: argparse.Namespace, warm: int, timed: int,
                 passthrough_rps: float, total_steps: int) -> dict[str, Any]:  # fmt: skip
    bench = ServeBench(kafka, forecaster(args.model, args.shape))
    try:
        bench.run_until(warm)
        records_before, forecasts_before = bench.stats.records_in, bench.stats.forecasts_out
        profiler = _start_profiler(args.profile)
        seconds = bench.run_until(warm + timed)
        _stop_profiler(profiler, args.profile)
        served = bench.stats.records_in - records_before
        made = bench.stats.forecasts_out - forecasts_before
        serve_rps = served / seconds
        logger.info("serve: %.0f records/s, %d forecasts for %d records", serve_rps, made, served)
        bench.run_until(min(100_000, args.records))
        rss_100k = rss_mb()
        bench.run_until(args.records)
        rss_1m = rss_mb()
        latency = latency_at(bench, serve_rps / 2, args, first_step=total_steps)
    finally:
        bench.close()
    steps_produced = int(serve_rps / 2 * (args.latency_s + 2) / args.series) + 1
    floor = transport_latency(kafka, serve_rps / 2, args, total_steps + steps_produced + 1)
    return {
        "passthrough_rps": round(passthrough_rps),
        "serve_rps": round(serve_rps),
        "ratio": round(serve_rps / passthrough_rps, 3),
        "forecasts_per_record": round(made / served, 3),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in {**latency, **floor}.items()},
        "half_load_rps": round(serve_rps / 2),
        "rss_mb_100k": round(rss_100k, 1),
        "rss_mb_1m": round(rss_1m, 1),
        "records_served": bench.stats.records_in,
        "series": args.series,
        "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }


def _start_profiler(path: Path | None) -> Any:
    if path is None:
        return None
    from pyinstrument import Profiler

    profiler = Profiler()
    profiler.start()
    return profiler


def _stop_profiler(profiler: Any, path: Path | None) -> None:
    if profiler is not None and path is not None:
        profiler.stop()
        path.write_text(profiler.output_text(unicode=False, color=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1_000_000, help="served in all")
    parser.add_argument("--timed", type=int, default=100_000, help="records in the rate phase")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--model", choices=["lstm", "dlinear"], default="lstm")
    parser.add_argument("--shape", choices=["issue4", "default"], default="issue4")
    parser.add_argument("--latency-s", type=float, default=20.0)
    parser.add_argument("--core", type=int, default=0, help="the core this process runs on")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile here")
    parser.add_argument("--json", action="store_true")
    add_results_option(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("kafka", "pipeline.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    figures = run(args)
    for name, value in figures.items():
        print(f"{name:>22}  {value}")
    if args.json:
        print(json.dumps(figures))
    append_if_asked(args, "serve", figures)


if __name__ == "__main__":
    main()
