"""Maintenance flow: compact the series table (repeats dropped, small files merged, old ones
vacuumed), as ``rollcast store compact`` and the daily ``compact`` deployment run it."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import require_log_level
from flows.retries import transient_only
from pipeline import ConfigurationError
from pipeline.config import Settings, StoreSettings
from pipeline.maintenance import compact
from pipeline.wiring import open_store


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30, retry_condition_fn=transient_only)
def compact_table(store: StoreSettings, retention_hours: float) -> dict[str, object]:
    """One compaction; every step is its own commit, so a retry redoes only what is left."""
    return compact(open_store(store), retention_hours).as_dict()


@flow(name="rollcast-compact")
def compact_flow(
    retention_hours: float | None = None, settings: Settings | None = None
) -> dict[str, object]:
    """Compact the series table; vacuum keeps the files versions of the last
    ``retention_hours`` (else ``ROLLCAST_STORE_RETENTION_HOURS``) need, for time travel.

    Settings not given are read from ``ROLLCAST_*`` variables, as a deployment's runs do.
    Returns the report: ``files``, ``bytes`` and ``rows`` as [before, after],
    ``duplicates_removed``, ``files_vacuumed`` and the table ``version`` after.
    """
    require_log_level()
    store = settings.store if settings is not None else StoreSettings()
    hours = store.store_retention_hours if retention_hours is None else retention_hours
    if not 0 <= hours < float("inf"):
        raise ConfigurationError(f"retention_hours must be 0 or more hours, not {hours}")
    return compact_table(store, hours)
