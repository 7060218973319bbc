"""Tune flow: an Optuna search on the series store's validation windows, one MLflow run per trial.

A thin flow over :func:`pipeline.selection.search_store`; the best config is written to
``DATA_DIR/tuned.json``, which ``rollcast train --tuned`` (or ``ROLLCAST_TUNED_CONFIG``) reads.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows import require_log_level
from pipeline.config import Settings
from pipeline.files import disk_full_is_resource_error
from pipeline.selection import budget_of, search_store
from pipeline.tracking import connect
from pipeline.training import TrainingSettings


@flow(name="rollcast-tune")
def tune_flow(
    trials: int | None = None,
    timeout_s: float | None = None,
    trial_timeout_s: float | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Search shapes and training settings on the stored series; write the best as JSON.

    ``trials`` and ``timeout_s`` default to ``ROLLCAST_TUNE_TRIALS`` (or 20) and
    ``ROLLCAST_TUNE_TIMEOUT_S``; the search stops at whichever comes first.
    ``trial_timeout_s`` (``ROLLCAST_TUNE_TRIAL_TIMEOUT_S``) stops one candidate as ``capped``.
    Settings not given are read from ``ROLLCAST_*`` variables. A full disk is a
    :class:`~pipeline.ResourceError` naming the file.
    """
    require_log_level()
    training = TrainingSettings.of(settings or Settings())
    tracking = connect(training.mlflow, training.store)
    budget = budget_of(training, trials, timeout_s, trial_timeout_s)
    with disk_full_is_resource_error(training.mlflow.mlflow_tracking_uri):
        return search_store(training, tracking, budget).summary()
