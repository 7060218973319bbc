"""The core must run where only numpy, pandas and torch exist (a GPU box without the edges).

An allow-list: importing the core may load the standard library, numpy, pandas, torch (and what
they load themselves) and core modules of ``pipeline``. Anything else, such as orjson, kafka,
mlflow, prefect or pydantic, fails the test, however it is reached.
"""

from __future__ import annotations

import json
import subprocess
import sys

CORE = (
    "contract",
    "covariates",
    "windows",
    "open_steps",
    "recipe",
    "model",
    "cells",
    "files",
    "train",
    "forecast",
    "evaluate",
    "intervals",
    "backtest",
    "stats",
    "training_data",
    "progress",
)
ALLOWED_LIBRARIES = ("numpy", "pandas", "torch")


def modules_after(imports: list[str]) -> set[str]:
    """Top-level names in ``sys.modules`` after importing ``imports`` in a fresh interpreter."""
    code = (
        "import json, sys\n"
        + "".join(f"import {name}\n" for name in imports)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout))


def test_the_core_imports_only_numpy_pandas_torch_and_the_standard_library() -> None:
    allowed = modules_after(list(ALLOWED_LIBRARIES))
    loaded = modules_after([f"pipeline.{name}" for name in CORE])

    extra = {
        name
        for name in loaded - allowed
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "pipeline"
    }
    assert not extra, f"the core pulls in {sorted(extra)}"
    pipeline_modules = {name for name in loaded if name.startswith("pipeline.")}
    assert pipeline_modules <= {f"pipeline.{name}" for name in CORE}
