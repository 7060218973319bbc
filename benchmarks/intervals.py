"""Intervals on a stream whose regime changes: serve's online adaptation against split conformal.

The stream of ``tests/test_integration_retrain.py``: 3 series of a daily cycle plus noise,
regime A (amplitude 1, period 24, level 0) then regime B (amplitude 4, period 12, level 3). A
champion is trained on regime A the train flow's way, with that test's shape (lookback 24,
horizon 6, hidden 32, segments of 12, norm "auto", 100 steps), and calibrated on A's
validation windows (``evaluate.calibrate_forecaster``). Then the serve loop itself
(``serve.serve_batch`` on the in-memory transport, version-2 messages, one step of each series
per batch as a live stream comes) reads A and then B, before any retraining. Reported per
level: the coverage of the last ``--last`` values scored after the change, with the online
adaptation (``--gain``, serve's default) and without it (gain 0: split conformal alone), each
from its own run over the same stream.

    python benchmarks/intervals.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import add_results_option, append_row

from pipeline.evaluate import calibrate_forecaster
from pipeline.forecast import LoadedForecaster
from pipeline.inmemory import MemoryTransport
from pipeline.intervals import DEFAULT_GAIN
from pipeline.model import Forecaster
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.records import RawRecord
from pipeline.serve import RollingForecaster, new_stats, serve_batch
from pipeline.train import fit_config
from pipeline.windows import build_window_sets

N_SERIES, STEP_MS, T0_MS = 3, 3_600_000, 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
SHAPE = {"lookback": 24, "horizon": 6, "hidden_size": 32, "segment_len": 12, "norm": "auto"}
VAL_FRACTION = 0.2


def regime(steps: range, amplitude: float, period: int, level: float) -> np.ndarray:
    """``(steps, N_SERIES)``: a cycle plus noise seeded by the first step (the test's)."""
    noise = np.random.default_rng(steps.start).normal(0, 0.1, (len(steps), N_SERIES))
    cycle = amplitude * np.sin(2 * np.pi * np.array(steps) / period)
    return level + cycle[:, None] + noise


def champion(a: np.ndarray, max_steps: int) -> Forecaster:
    """Trained on regime A and calibrated on its validation windows."""
    config = ForecasterConfig(("load",), **SHAPE).with_season(24)
    frames = {f"s{i}": pd.DataFrame({"load": a[:, i]}) for i in range(N_SERIES)}
    train, val = build_window_sets(frames, ("load",), config.lookback, config.horizon, VAL_FRACTION)
    model = fit_config(config, train, val, TrainConfig(max_steps=max_steps)).model
    calibrate_forecaster(model, val)
    return model


def records(values: np.ndarray, first_step: int) -> list[list[RawRecord]]:
    """One batch per step: that step's record of each series."""
    batches = []
    for row, step in enumerate(range(first_step, first_step + len(values))):
        batch = []
        for i in range(N_SERIES):
            ts_ms = T0_MS + step * STEP_MS  # produced as it is measured, as a live stream is
            body = {"series": f"s{i}", "ts": ts_ms, "values": {"load": values[row, i]}}
            key = f"s{i}".encode()
            batch.append(RawRecord("obs", i, step, key, json.dumps(body).encode(), ts_ms))
        batches.append(batch)
    return batches


def stream_coverage(
    model: Forecaster, a: np.ndarray, b: np.ndarray, gain: float, last: int
) -> dict:
    """Serve A then B; per level, the coverage of the last ``last`` values scored in B."""
    rolling = RollingForecaster(LoadedForecaster("bench", "1", model), 100, message="v2")
    transport, stats = MemoryTransport(), new_stats(rolling, gain)
    for batch in records(a, 0):
        serve_batch(batch, rolling, transport.sink(), stats)
    online = stats.online_error
    start_covered, start_scored = (
        online.covered.sum(axis=1).copy(),
        int(online.interval_scored.sum()),
    )
    history = []  # (values scored in B so far, covered so far per level)
    for batch in records(b, len(a)):
        serve_batch(batch, rolling, transport.sink(), stats)
        scored = int(online.interval_scored.sum()) - start_scored
        history.append((scored, online.covered.sum(axis=1) - start_covered))
    end_scored, end_covered = history[-1]
    since = next(c for s, c in history if s >= end_scored - last)
    since_scored = next(s for s, _ in history if s >= end_scored - last)
    window = end_scored - since_scored
    coverage = (end_covered - since) / window
    return {
        f"{level:g}": round(float(c), 4) for level, c in zip(online.levels, coverage, strict=True)
    } | {"values": window}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-steps", type=int, default=360)
    parser.add_argument(
        "--b-steps", type=int, default=720, help="enough for --last values after the change"
    )
    parser.add_argument("--last", type=int, default=500)
    parser.add_argument("--gain", type=float, default=DEFAULT_GAIN)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    add_results_option(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    a = regime(range(args.a_steps), amplitude=1.0, period=24, level=0.0)
    b = regime(
        range(args.a_steps, args.a_steps + args.b_steps), amplitude=4.0, period=12, level=3.0
    )
    model = champion(a, args.max_steps)
    figures = {
        "online": stream_coverage(model, a, b, args.gain, args.last),
        "split_conformal": stream_coverage(model, a, b, 0.0, args.last),
        "gain": args.gain,
        "last": args.last,
        "radius_0.8_step1": round(float(model.calibration.radius[0, 0, 0]), 4)
        if model.calibration
        else math.nan,
    }
    if args.results:
        append_row(args.results, "intervals", figures)
    print(json.dumps(figures) if args.json else figures)


if __name__ == "__main__":
    main()
