"""The LTSF table: every dataset, horizon, feature setting, model and seed; resumable.

Each finished backtest is appended to ``--results`` as one row (``benchmarks/results.py``: the
metrics with the commit, machine and command); a rerun skips what is already there, so the
table can be built across sessions. ``--report`` prints the markdown table for BENCHMARKS.md
(mean ± std over seeds) beside the published figures.

    python benchmarks/ltsf.py --jobs 2                 # the whole table (hours on a CPU)
    python benchmarks/ltsf.py --report                 # the table from what has run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from results import append_row, read_figures

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "ltsf.jsonl"
HORIZONS = (96, 192, 336, 720)

# Published MSE, M setting, for comparison only, as quoted in issue 3. DLinear (L=336): Zeng et al.,
# AAAI 2023. Best of SegRNN (Lin et al. 2023), PatchTST/64 (Nie et al., ICLR 2023), TimeMixer
# (Wang et al., ICLR 2024).
PUBLISHED = {
    ("ETTh1", "DLinear, L=336"): (0.375, 0.405, 0.439, 0.472),
    ("ETTh2", "DLinear, L=336"): (0.289, 0.383, 0.448, 0.605),
    ("ETTh1", "best of SegRNN/PatchTST/TimeMixer"): (0.351, 0.392, 0.422, 0.440),
    ("ETTh2", "best of SegRNN/PatchTST/TimeMixer"): (0.271, 0.317, 0.329, 0.342),
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One backtest in a worker process (one torch thread, so workers do not fight)."""
    import torch

    torch.set_num_threads(job.pop("threads"))
    job.pop("first_seed")
    from pipeline.backtest import BacktestSpec, load_ltsf_csv, run_backtest

    frame, dataset = load_ltsf_csv(Path(job.pop("path"))), job.pop("dataset")
    return run_backtest(frame, dataset, BacktestSpec(**job)).metrics


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["dataset"],
        row["model"],
        row["features"],
        row["horizon"],
        row["seed"],
        row["split"],
    )


def planned_jobs(args: argparse.Namespace, done: set[tuple[Any, ...]]) -> list[dict[str, Any]]:
    jobs = []
    for dataset in args.datasets:
        for features in args.features:
            for horizon in args.horizons:
                for model in args.models:
                    seeds = args.seeds if model == "lstm" else args.baseline_seeds
                    for seed in seeds:
                        job = {
                            "dataset": dataset,
                            "model": model,
                            "features": features,
                            "horizon": horizon,
                            "seed": seed,
                            "split": args.split,
                        }
                        if key(job) in done:
                            continue
                        jobs.append(
                            {
                                **job,
                                "path": str(args.data_dir / f"{dataset}.csv"),
                                "first_seed": seeds[0],
                                "lookback": args.lookback,
                                "threads": args.threads,
                                "model_overrides": json.loads(args.model_overrides),
                                "train_overrides": json.loads(args.train_overrides),
                            }
                        )
    return sorted(jobs, key=job_priority)


def job_priority(job: dict[str, Any]) -> tuple[Any, ...]:
    """Seed 0 of every cell first, so a cut-short run still fills the table; then the cheap
    S-setting seeds; then the M seeds dataset by dataset. Longest first within each group,
    so the pool does not end waiting on one big job."""
    if job["seed"] == job["first_seed"]:
        return (0, job["model"] != "lstm", job["features"] != "M", "", -job["horizon"])
    return (1, job["features"] == "M", job["model"] != "lstm", job["dataset"], -job["horizon"])


def run(args: argparse.Namespace) -> None:
    done = {key(row) for row in read_figures(args.results)}
    jobs = planned_jobs(args, done)
    logging.info("%d backtests to run, %d already done", len(jobs), len(done))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, dict(job)): job for job in jobs}
        for future in as_completed(futures):
            metrics = future.result()
            append_row(args.results, "ltsf", metrics)
            logging.info(
                "%s %s %s H=%s seed=%s %s: mse %.4f mae %.4f (%ss)",
                *key(metrics),
                metrics["mse"],
                metrics["mae"],
                metrics["wall_s"],
            )


def report(path: Path) -> str:
    """Markdown tables of MSE and MAE (mean ± std over seeds), one row per dataset/setting/model."""
    cells: dict[tuple[str, str, str], dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for row in read_figures(path):
        if row["split"] != "test":
            continue
        cell = cells[(row["dataset"], row["features"], row["model"])]
        cell[row["horizon"]].append((row["mse"], row["mae"]))
    header = "| dataset | features | model | " + " | ".join(f"H={h}" for h in HORIZONS) + " |"
    lines = [header, "|" + "---|" * (3 + len(HORIZONS))]
    for (dataset, features, model), by_horizon in sorted(cells.items()):
        values = [_cell(by_horizon.get(h, [])) for h in HORIZONS]
        lines.append(f"| {dataset} | {features} | {model} | " + " | ".join(values) + " |")
    for (dataset, name), figures in PUBLISHED.items():
        values = [f"{v:.3f}" for v in figures]
        lines.append(f"| {dataset} | M | {name} (published) | " + " | ".join(values) + " |")
    return "\n".join(lines)


def timing(path: Path) -> str:
    """Wall time per backtest and training throughput of the trained models, by cell."""
    runs: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in read_figures(path):
        if row["split"] == "test" and "train_samples_per_s" in row:
            runs[(row["model"], row["dataset"], row["features"], row["horizon"])].append(row)
    lines = [
        "| model | dataset | features | H | runs | epochs | wall s (mean) | train windows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model, dataset, features, horizon), rows in sorted(runs.items()):
        wall = statistics.mean(r["wall_s"] for r in rows)
        rate = statistics.mean(r["train_samples_per_s"] for r in rows)
        epochs = "/".join(str(r["epochs"]) for r in rows)
        lines.append(
            f"| {model} | {dataset} | {features} | {horizon} | {len(rows)} | {epochs} "
            f"| {wall:.0f} | {rate:.0f} |"
        )
    return "\n".join(lines)


def _cell(runs: list[tuple[float, float]]) -> str:
    if not runs:
        return "—"
    mses, maes = [r[0] for r in runs], [r[1] for r in runs]
    if len(runs) == 1:
        return f"{mses[0]:.3f} / {maes[0]:.3f}"
    return (
        f"{statistics.mean(mses):.3f}±{statistics.stdev(mses):.3f} / "
        f"{statistics.mean(maes):.3f} (n={len(runs)})"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--datasets", nargs="+", default=["ETTh1", "ETTh2"])
    parser.add_argument("--features", nargs="+", default=["M", "S"])
    parser.add_argument("--horizons", nargs="+", type=int, default=list(HORIZONS))
    parser.add_argument(
        "--models", nargs="+", default=["lstm", "dlinear", "repeat_last", "seasonal_naive"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--baseline-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--lookback", type=int, help="default: the model's, cut to the data")
    parser.add_argument(
        "--model-overrides", default="{}", help="JSON, e.g. '{\"hidden_size\": 128}'"
    )
    parser.add_argument("--train-overrides", default="{}", help="JSON, e.g. '{\"max_steps\": 400}'")
    parser.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument(
        "--split", choices=["test", "val"], default="test", help="val: for choosing settings"
    )
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    if args.report:
        print(report(args.results) + "\n\n" + timing(args.results))
    else:
        run(args)


if __name__ == "__main__":
    main()
