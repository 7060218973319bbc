"""Warm start against cold start, side by side: the retraining a month of new data asks for.

ETTh1's ``OT`` (one series, hourly). The champion is trained the train flow's way (defaults,
early stopping, the last 20% of the series as validation) on the first 8,640 rows. A month
(720 rows) later the data has grown, and the challenger is trained on it twice, from the same
windows: cold (fresh weights, ``max_steps`` 1000) and warm (the champion's weights,
``ROLLCAST_WARM_START_STEPS`` 250). Both are scored on the gate's validation windows and on the
month after (test), which neither saw. Resumable; one JSON line per seed.

    python benchmarks/warm_start.py --seeds 0,1,2
    python benchmarks/warm_start.py --report
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.config import TrainSettings
from pipeline.datasets import load_csv
from pipeline.evaluate import mse
from pipeline.forecast import predict
from pipeline.model import Forecaster, ForecasterConfig, build_forecaster, warm_started
from pipeline.train import TrainConfig, fit
from pipeline.windows import WindowSet, build_window_sets, window_starts

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ETTh1.csv"
RESULTS = ROOT / "benchmarks" / "results" / "warm-start.jsonl"
CHAMPION_ROWS, MONTH = 8640, 720
VAL_FRACTION = TrainSettings().val_fraction


def series(rows: int) -> dict[str, pd.DataFrame]:
    """The first ``rows`` hours of ETTh1's OT, as the store holds a series."""
    return {"ETTh1": load_csv(DATA).set_index("ts")[["OT"]].iloc[:rows]}


def test_windows(values: np.ndarray, config: ForecasterConfig) -> WindowSet:
    """Windows whose targets lie in the month after the grown data."""
    span = config.lookback + config.horizon
    first = CHAMPION_ROWS + MONTH - config.lookback
    starts = window_starts(values, first, CHAMPION_ROWS + 2 * MONTH, span)
    labels = np.full(len(starts), "ETTh1", dtype=object)
    return WindowSet(values, starts.astype(np.int64), config.lookback, config.horizon, labels)


def scored(model: Forecaster, windows: WindowSet) -> float:
    scale = model.scale.detach().cpu().numpy()
    return mse(predict(model, windows.inputs), windows.targets, scale)


def trained(model: Forecaster, data: dict[str, pd.DataFrame], config: TrainConfig) -> dict:
    train, val = build_window_sets(
        data, ("OT",), model.config.lookback, model.config.horizon, VAL_FRACTION
    )
    started = time.perf_counter()
    result = fit(model, train, val, config)
    return {
        "model": result.model,
        "seconds": round(time.perf_counter() - started, 1),
        "steps": result.steps,
        "val_mse": scored(result.model, val),
    }


def run_seed(seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    config = ForecasterConfig(("OT",))
    cold_config = TrainConfig(seed=seed)
    warm_config = replace(cold_config, max_steps=TrainSettings().warm_start_steps)
    champion = trained(build_forecaster(config, seed=seed), series(CHAMPION_ROWS), cold_config)
    grown = series(CHAMPION_ROWS + MONTH)
    cold = trained(build_forecaster(config, seed=seed + 100), grown, cold_config)
    warm_model = warm_started(copy.deepcopy(champion["model"]), config)
    assert warm_model is not None
    warm = trained(warm_model, grown, warm_config)
    values = series(CHAMPION_ROWS + 2 * MONTH)["ETTh1"].to_numpy(dtype=np.float32)
    test = test_windows(values, config)
    row: dict[str, Any] = {"seed": seed, "lookback": config.lookback, "horizon": config.horizon}
    for name, run in (("champion", champion), ("cold", cold), ("warm", warm)):
        row[name] = {k: v for k, v in run.items() if k != "model"}
        row[name]["test_mse"] = scored(run["model"], test)
    return row


def report(rows: list[dict[str, Any]]) -> str:
    def cell(name: str, key: str) -> str:
        values = [row[name][key] for row in rows]
        spread = f"±{statistics.stdev(values):.3g}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.4g}{spread}"

    lines = ["| run | seconds | steps | val MSE | test MSE (next month) |", "|---|---|---|---|---|"]
    for name in ("champion", "cold", "warm"):
        keys = ("seconds", "steps", "val_mse", "test_mse")
        lines.append(f"| {name} | " + " | ".join(cell(name, k) for k in keys) + " |")
    ratios = [row["cold"]["seconds"] / row["warm"]["seconds"] for row in rows]
    lines.append(f"\nCold/warm wall time, per seed: {', '.join(f'{r:.1f}x' for r in ratios)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    done = (
        [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        if args.report or any(row["seed"] == seed for row in done):
            continue
        row = run_seed(seed)
        with RESULTS.open("a") as out:
            out.write(json.dumps(row) + "\n")
        done.append(row)
        print(json.dumps(row), flush=True)
    print(report(done))


if __name__ == "__main__":
    main()
