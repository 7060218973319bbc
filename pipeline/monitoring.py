"""The champion's record after training: serve's online error and the drift check's decisions.

Both go on the MLflow run that trained the version. Serve logs ``online_mse`` (in the units of
the run's ``val_mse``) and ``online_values`` (the forecast values behind it), stepped by how many
values of the version had been scored; the drift check merges its latest reports
(:func:`online_error`) and records its figures as metrics and its decision as the
``rollcast.drift`` tag (:func:`record_drift`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from pipeline.registry import RegistryError

if TYPE_CHECKING:
    from pipeline.tracking import Tracking

logger = logging.getLogger(__name__)

# Serve's MSE of published forecasts, in the units of the training run's val_mse.
ONLINE_MSE = "online_mse"
ONLINE_VALUES = "online_values"  # forecast values (steps ahead x channels) behind it
ONLINE_COVERAGE = "online_coverage"  # .<level>: the share of actuals inside their interval
DRIFT_TAG = "rollcast.drift"
# A longer reason is cut: well inside MLflow's limit on a run tag's value (8000 characters).
MAX_REASON_CHARS = 5000


def log_online_error(
    tracking: Tracking,
    version: str,
    mse: float,
    values: int,
    scored: int,
    coverage: dict[float, float] | None = None,
) -> None:
    """Serve's online MSE of ``version`` (validation units) over ``values`` forecast values,
    and the coverage of its published intervals over the same stretch (``online_coverage.<level>``),
    on the run that trained it. The step is how many values of the version had been scored.
    """
    run_id = _run_of(tracking, version)
    tracking.client.log_metric(run_id, ONLINE_MSE, mse, step=scored)
    tracking.client.log_metric(run_id, ONLINE_VALUES, values, step=scored)
    for level, share in (coverage or {}).items():
        tracking.client.log_metric(run_id, f"{ONLINE_COVERAGE}.{level:g}", share, step=scored)


def online_error(
    tracking: Tracking, version: str, min_values: int = 1
) -> tuple[float, float, int] | None:
    """(validation MSE, online MSE, values behind it) of ``version``: serve's latest reports,
    merged from the newest back until they cover ``min_values`` forecast values (or all there
    are); None before serve's first report. Reads the two metrics' whole histories."""
    client = tracking.client
    run_id = _run_of(tracking, version)
    mses = {m.step: m.value for m in client.get_metric_history(run_id, ONLINE_MSE)}
    counts = {m.step: m.value for m in client.get_metric_history(run_id, ONLINE_VALUES)}
    mse, values = _newest_mean(mses, counts, min_values)
    if not values:
        return None
    return client.get_run(run_id).data.metrics["val_mse"], mse, values


def _newest_mean(
    means: dict[int, float], counts: dict[int, float], min_values: int
) -> tuple[float, int]:
    """The mean of serve's reports ``means`` (by step), each weighted by the values behind it
    (``counts``), from the newest back until they cover ``min_values``; and how many values."""
    total, values = 0.0, 0
    for step in sorted(means.keys() & counts.keys(), reverse=True):
        total, values = total + means[step] * counts[step], values + int(counts[step])
        if values >= min_values:
            break
    return (total / values if values else math.nan), values


def online_coverage(tracking: Tracking, version: str, min_values: int = 1) -> dict[float, float]:
    """Per level, the coverage of ``version``'s published intervals in serve's latest reports,
    merged from the newest back until they cover ``min_values`` values, as :func:`online_error`
    merges the MSE; empty without intervals."""
    client = tracking.client
    run_id = _run_of(tracking, version)
    counts = {m.step: m.value for m in client.get_metric_history(run_id, ONLINE_VALUES)}
    prefix = f"{ONLINE_COVERAGE}."
    levels = [name for name in client.get_run(run_id).data.metrics if name.startswith(prefix)]
    coverage = {}
    for name in levels:
        shares = {m.step: m.value for m in client.get_metric_history(run_id, name)}
        share, values = _newest_mean(shares, counts, min_values)
        if values:
            coverage[float(name.removeprefix(prefix))] = share
    return coverage


def record_drift(tracking: Tracking, version: str, figures: dict[str, float], why: str) -> None:
    """A drift check's figures (metrics) and decision (a tag) on the champion's training run."""
    run_id = _run_of(tracking, version)
    for name, value in figures.items():
        tracking.client.log_metric(run_id, name, value)
    tracking.client.set_tag(run_id, DRIFT_TAG, why[:MAX_REASON_CHARS])


def _run_of(tracking: Tracking, version: str) -> str:
    name = tracking.settings.model_name
    run_id = tracking.client.get_model_version(name, version).run_id
    if run_id is None:
        raise RegistryError(f"version {version} of {name} has no run")
    return str(run_id)
