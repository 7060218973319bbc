"""Warm start against cold start, side by side: the retraining that new data asks for.

One real series each: ETTh1's ``OT`` (hourly) and Taylor's half-hourly electricity demand
(``pip install -e '.[bench]'``). The champion is trained the train flow's way (defaults, the
lookback cut to the data, early stopping, the last 20% of the series as validation) on the
first 60% of the rows. Then 10% more rows arrive, and the challenger is trained on the grown
series twice, from the same windows: cold (fresh weights, ``max_steps`` 1000) and warm (the
champion's weights, ``ROLLCAST_WARM_START_STEPS`` 250). Both are scored on the gate's
validation windows and on the next 10% of the rows (test), which neither saw. Resumable; one
row per dataset and seed in ``results/warm-start.jsonl`` (``benchmarks/results.py``).

    python benchmarks/warm_start.py --datasets ETTh1,taylor --seeds 0,1,2
    python benchmarks/warm_start.py --report
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import append_row, read_figures

from pipeline.config import TrainSettings
from pipeline.datasets import load_csv
from pipeline.evaluate import mse
from pipeline.forecast import predict
from pipeline.model import Forecaster, build_forecaster, warm_started
from pipeline.recipe import ForecasterConfig, TrainConfig
from pipeline.train import fit
from pipeline.windows import WindowSet, build_window_sets, split_point, window_starts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "warm-start.jsonl"
CHAMPION_SHARE, NEW_SHARE = 0.6, 0.1  # of the rows: the champion's, then what arrives after
VAL_FRACTION = TrainSettings().val_fraction


def etth1() -> pd.DataFrame:
    return load_csv(ROOT.parent / "shared" / "data" / "ETTh1.csv").set_index("ts")[["OT"]]


def taylor() -> pd.DataFrame:
    from generalization import taylor as load_taylor

    return load_taylor().set_index("date")


DATASETS = {"ETTh1": etth1, "taylor": taylor}


def test_windows(values: np.ndarray, start: int, end: int, config: ForecasterConfig) -> WindowSet:
    """Windows whose targets lie in rows ``start``..``end``."""
    span = config.lookback + config.horizon
    starts = window_starts(values, start - config.lookback, end, span)
    labels = np.full(len(starts), "test", dtype=object)
    return WindowSet(values, starts.astype(np.int64), config.lookback, config.horizon, labels)


def sized_config(frame: pd.DataFrame, rows: int) -> ForecasterConfig:
    """The default shape with the lookback the train flow would give a series of ``rows``."""
    return ForecasterConfig(tuple(frame.columns)).fitted(split_point(rows, VAL_FRACTION))


def scored(model: Forecaster, windows: WindowSet) -> float:
    scale = model.scale.detach().cpu().numpy()
    return mse(predict(model, windows.inputs), windows.targets, scale)


def trained(model: Forecaster, data: dict[str, pd.DataFrame], config: TrainConfig) -> dict:
    train, val = build_window_sets(
        data, model.config.channels, model.config.lookback, model.config.horizon, VAL_FRACTION
    )
    started = time.perf_counter()
    result = fit(model, train, val, config)
    return {
        "model": result.model,
        "seconds": round(time.perf_counter() - started, 1),
        "steps": result.steps,
        "val_mse": scored(result.model, val),
    }


def run_seed(dataset: str, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    frame = DATASETS[dataset].load().astype(np.float32)
    first, grown_rows = (
        int(len(frame) * CHAMPION_SHARE),
        int(len(frame) * (CHAMPION_SHARE + NEW_SHARE)),
    )
    config = sized_config(frame, first)
    cold_config = TrainConfig(seed=seed)
    warm_config = replace(cold_config, max_steps=TrainSettings().warm_start_steps)
    champion = trained(
        build_forecaster(config, seed=seed), {dataset: frame.iloc[:first]}, cold_config
    )
    grown = {dataset: frame.iloc[:grown_rows]}
    cold = trained(build_forecaster(config, seed=seed + 100), grown, cold_config)
    warm_model = warm_started(copy.deepcopy(champion["model"]), config)
    assert warm_model is not None
    warm = trained(warm_model, grown, warm_config)
    test_end = int(len(frame) * (CHAMPION_SHARE + 2 * NEW_SHARE))
    test = test_windows(frame.to_numpy(), grown_rows, test_end, config)
    row: dict[str, Any] = {"dataset": dataset, "seed": seed, "lookback": config.lookback}
    row["horizon"] = config.horizon
    for name, run in (("champion", champion), ("cold", cold), ("warm", warm)):
        row[name] = {k: v for k, v in run.items() if k != "model"}
        row[name]["test_mse"] = scored(run["model"], test)
    return row


def report(rows: list[dict[str, Any]]) -> str:
    """Mean ± std over seeds per dataset and run, and the cold/warm wall-time ratio per seed."""
    header = "| dataset | run | seconds | steps | val MSE | test MSE |"
    lines = [header, "|---|---|---|---|---|---|"]
    for dataset in sorted({row["dataset"] for row in rows}):
        mine = [row for row in rows if row["dataset"] == dataset]
        for name in ("champion", "cold", "warm"):
            cells = [_mean(mine, name, k) for k in ("seconds", "steps", "val_mse", "test_mse")]
            lines.append(f"| {dataset} | {name} | " + " | ".join(cells) + " |")
        ratios = ", ".join(f"{r['cold']['seconds'] / r['warm']['seconds']:.1f}x" for r in mine)
        lines.append(f"| {dataset} | cold/warm time | {ratios} | | | |")
    return "\n".join(lines)


def _mean(rows: list[dict[str, Any]], name: str, key: str) -> str:
    values = [row[name][key] for row in rows]
    spread = f"±{statistics.stdev(values):.3g}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4g}{spread}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    done = read_figures(RESULTS)
    jobs = [(d, int(s)) for d in args.datasets.split(",") for s in args.seeds.split(",")]
    for dataset, seed in jobs:
        if args.report or any((r["dataset"], r["seed"]) == (dataset, seed) for r in done):
            continue
        row = run_seed(dataset, seed)
        append_row(RESULTS, "warm_start", row)
        done.append(row)
        print(json.dumps(row), flush=True)
    print(report(done))


if __name__ == "__main__":
    main()
