"""The core must run where only numpy, pandas and torch exist (a GPU box without the edges)."""

from __future__ import annotations

import subprocess
import sys

CORE = ("windows", "model", "train", "evaluate", "backtest")
EDGES = ("kafka", "mlflow", "prefect", "pydantic_settings")


def test_core_modules_import_no_kafka_mlflow_or_prefect() -> None:
    code = (
        "import sys\n"
        + "".join(f"import pipeline.{name}\n" for name in CORE)
        + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({EDGES!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
