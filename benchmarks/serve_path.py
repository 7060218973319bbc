"""The serve loop's own cost per record, without a broker: parse, checks, windows, model, output.

    python benchmarks/serve_path.py            # about 1 minute
    python benchmarks/serve_path.py --json
    python benchmarks/serve_path.py --results benchmarks/results/serve-path.jsonl   # a row too

Runs :func:`pipeline.serve.serve_batch` over batches of 2,000 one-channel records from 1,000
series (every record makes a forecast, windows warmed first) into a sink that keeps nothing, on
one core with one torch thread. The model is a DLinear, so the figure is the loop's overhead,
not the network's. Prints the best of ``--repeats`` timings, in microseconds per record.

Meant for A/B runs of two commits (the Kafka benchmark, ``serve.py``, swings by ±20% on a
shared machine; this one by a few percent)::

    benchmarks/serve_path_ab.sh REV [ROUNDS]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from results import add_results_option, append_if_asked

from pipeline.forecast import LoadedForecaster
from pipeline.model import build_forecaster
from pipeline.recipe import ForecasterConfig
from pipeline.records import RawRecord
from pipeline.serve import RollingForecaster, new_stats, serve_batch

STEP_MS = 3_600_000
SERIES, LOOKBACK, HORIZON, BATCH = 1000, 96, 24, 2000


class NullSink:
    def send_forecasts(self, batch: object) -> None:
        pass

    def send_forecast(self, forecast: object) -> None:
        pass

    def send_dead_letter(self, letter: object) -> None:
        pass

    def flush(self, timeout_s: float = 0.0) -> int:
        return 0


def records(first_step: int, steps: int) -> list[RawRecord]:
    out = []
    for step in range(first_step, first_step + steps):
        for i in range(SERIES):
            key = f"sensor-{i:04d}"
            value = (
                f'{{"series":"{key}","ts":{step * STEP_MS},"values":{{"value":{i + step % 24}}}}}'
            )
            out.append(RawRecord("obs", i % 3, len(out), key.encode(), value.encode(), 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="timed steps of every series")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    add_results_option(parser)
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ForecasterConfig(("value",), LOOKBACK, HORIZON, architecture="dlinear")
    model = LoadedForecaster("m", "1", build_forecaster(config).eval())
    best = float("inf")
    for _ in range(args.repeats):
        rolling = RollingForecaster(model, 100_000)
        stats, sink = new_stats(rolling), NullSink()
        warm = records(0, LOOKBACK)
        for start in range(0, len(warm), BATCH):
            serve_batch(warm[start : start + BATCH], rolling, sink, stats)  # type: ignore[arg-type]
        timed = records(LOOKBACK, args.steps)
        started = time.perf_counter()
        for start in range(0, len(timed), BATCH):
            serve_batch(timed[start : start + BATCH], rolling, sink, stats)  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - started) / len(timed))
        assert stats.forecasts_out == len(warm) + len(timed) - (LOOKBACK - 1) * SERIES
    result = {"us_per_record": round(best * 1e6, 2), "records_per_s": round(1 / best)}
    print(json.dumps(result) if args.json else f"{result['us_per_record']} µs per record")
    append_if_asked(args, "serve_path", result)


if __name__ == "__main__":
    main()
