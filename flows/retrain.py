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

from flows import require_log_level
from flows.train import train_flow
from pipeline import monitoring, registry
from pipeline.config import Settings
from pipeline.evaluate import DriftCheck
from pipeline.tracking import connect_reader


@flow(name="rollcast-retrain-on-drift")
def drift_flow(
    train_max_steps: int | None = None, settings: Settings | None = None
) -> dict[str, object]:
    """Compare the champion's online and validation MSE; run the train flow past the ratio.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    """
    require_log_level()
    settings = settings or Settings()
    drift, logger = settings.drift, get_run_logger()
    tracking = connect_reader(settings.mlflow)
    version = registry.champion_version(tracking)
    if version is None:
        logger.info("nothing to compare: no champion")
        return {"version": None, "retrain": False, "reason": "no champion"}
    figures = monitoring.online_error(tracking, version, drift.drift_min_scored)
    if figures is None:
        reason = f"no online error of v{version} yet"
        logger.info("nothing to compare: %s", reason)
        return {"version": version, "retrain": False, "reason": reason}
    coverage = monitoring.online_coverage(tracking, version, drift.drift_min_scored)
    check = DriftCheck(
        *figures,
        drift.drift_ratio,
        drift.drift_min_scored,
        coverage,
        drift.drift_coverage_drop,
    )
    logger.info("version %s: %s", version, check.reason())
    metrics = {"drift_ratio": check.ratio, "drift_online_mse": check.online_mse}
    metrics |= {f"drift_coverage.{level:g}": share for level, share in coverage.items()}
    monitoring.record_drift(tracking, version, metrics, check.reason())
    outcome: dict[str, object] = {
        "version": version,
        "retrain": check.retrain,
        "reason": check.reason(),
        "ratio": check.ratio,
    }
    if check.retrain:
        outcome["trained"] = train_flow(max_steps=train_max_steps, settings=settings)
    return outcome
