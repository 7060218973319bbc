"""Retraining driven by forecast error: serve's online MSE of the champion against its
validation MSE; past ``ROLLCAST_DRIFT_RATIO``, the train flow runs.

Serve logs ``online_mse`` (validation units) to the champion's MLflow run every
``ROLLCAST_ONLINE_REPORT_S``; this flow merges its latest reports until they cover
``ROLLCAST_DRIFT_MIN_SCORED`` forecast values, logs its decision there too
(metric ``drift_ratio``, tag ``rollcast.drift``) and in its own run, and retrains when asked.
The deployment runs it every ``ROLLCAST_DRIFT_CHECK_INTERVAL_S``. The new version still has to
pass the promotion gate; serve swaps it in when it takes the alias.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.train import train_flow
from pipeline import registry
from pipeline.config import DriftSettings, MlflowSettings
from pipeline.evaluate import DriftCheck


@flow(name="rollcast-retrain-on-drift")
def drift_flow(
    train_max_steps: int | None = None,
    mlflow_settings: MlflowSettings | None = None,
    drift: DriftSettings | None = None,
) -> dict[str, object]:
    """Compare the champion's online and validation MSE; run the train flow past the ratio."""
    settings, drift = mlflow_settings or MlflowSettings(), drift or DriftSettings()
    logger = get_run_logger()
    registry.connect_reader(settings)
    version = registry.champion_version(settings)
    if version is None:
        logger.info("nothing to compare: no champion")
        return {"version": None, "retrain": False, "reason": "no champion"}
    figures = registry.online_error(settings, version, drift.drift_min_scored)
    if figures is None:
        reason = f"no online error of v{version} yet"
        logger.info("nothing to compare: %s", reason)
        return {"version": version, "retrain": False, "reason": reason}
    check = DriftCheck(*figures, drift.drift_ratio, drift.drift_min_scored)
    logger.info("version %s: %s", version, check.reason())
    metrics = {"drift_ratio": check.ratio, "drift_online_mse": check.online_mse}
    registry.record_drift(settings, version, metrics, check.reason())
    outcome: dict[str, object] = {
        "version": version,
        "retrain": check.retrain,
        "reason": check.reason(),
        "ratio": check.ratio,
    }
    if check.retrain:
        outcome["trained"] = train_flow(max_steps=train_max_steps, mlflow_settings=settings)
    return outcome
