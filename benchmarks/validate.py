"""One backtest on the validation split of a generalization dataset, with overrides: how the
defaults were chosen (issue 10) without looking at the test split.

    python benchmarks/validate.py taylor --train '{"schedule": "cosine", "max_steps": 250}'
    python benchmarks/validate.py ETTh1 --horizon 192 --model dlinear

Prints one JSON line; ``--results FILE`` also appends it there as a row (``benchmarks/results.py``).
The rows behind BENCHMARKS.md are in results/defaults-selection.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import DATASETS
from results import add_results_option, append_if_asked

from pipeline.backtest import BacktestSpec, run_backtest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=list(DATASETS))
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--lookback", type=int, help="default: the model's, cut to the data")
    parser.add_argument("--shape", default="{}", help="ForecasterConfig overrides, JSON")
    parser.add_argument("--train", default="{}", help="TrainConfig overrides, JSON")
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = BacktestSpec(
        horizon=args.horizon,
        model=args.model,
        lookback=args.lookback,
        split="val",
        model_overrides=json.loads(args.shape),
        train_overrides=json.loads(args.train),
    )
    metrics = run_backtest(DATASETS[args.dataset].load(), args.dataset, spec).metrics
    keep = (
        "dataset",
        "model",
        "horizon",
        "lookback",
        "split",
        "mse",
        "steps",
        "best_step",
        "wall_s",
    )
    figures = {
        **{k: metrics.get(k) for k in keep},
        "shape": spec.model_overrides,
        "train": spec.train_overrides,
    }
    print(json.dumps(figures))
    append_if_asked(args, "validate", figures)


if __name__ == "__main__":
    main()
