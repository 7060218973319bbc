"""Connecting to MLflow: a client on the configured store, and the experiment runs go to.

:func:`connect` (training, tuning, registering, backtests) makes sure the experiment exists;
:func:`connect_reader` (serve, the drift check) creates nothing, and refuses a sqlite store that
is not there. Both return a :class:`Tracking`, which every MLflow call of Rollcast takes: the
library never points MLflow's process-global ("fluent") state at a store. The one call MLflow
offers no client form of, logging a model, is confined to :func:`pipeline.packaging.log_model`.

A run whose process is killed stays RUNNING in MLflow. Every run Rollcast opens carries its
owner (:class:`Owner`: host, pid, the process's start) and a heartbeat tag refreshed while it is
open (:func:`pipeline.runs.open_run`); :func:`fail_abandoned_runs`, called as training and tuning
begin, marks FAILED, with the reason as a tag, the RUNNING runs whose owner has ended: on this
host the process is gone (or is another one under the same pid); from another host, where no
process can be asked, its heartbeat has been silent for ``STALE_AFTER_S``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import OutageError, RollcastError
from pipeline.config import MlflowSettings, StoreSettings

logger = logging.getLogger(__name__)


class RegistryError(RollcastError):
    """The registry has no usable model, or MLflow refused an operation."""


class RegistryUnavailableError(RegistryError, OutageError):
    """The registry could not be asked: a server down, a locked or missing store.

    Not the same as "no champion": nothing may be concluded about the models in it.
    """


# What MLflow answers when a model or alias does not exist, as opposed to failing to answer.
NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})

# What the experiment holds, for the MLflow UI: its kind selector and, in 3.0-3.x releases
# without the GenAI/ML switch, the tab an experiment opens on. The UI (mlflow/server/js/build/
# static/js/main.*.js, module 31080) reads it as
#   e.find(e=>"mlflow.experimentKind"===e.key)
# and compares it with its enum value CUSTOM_MODEL_DEVELOPMENT="custom_model_development".
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI ignores that tag when choosing the tab: its feature flag (module 89511,
# ``R=()=>!0``) makes the experiment kind follow the sidebar's GenAI / Machine learning switch,
# read from the page's ``workflowType`` query parameter, else the browser's local storage
# (key "mlflow.workflowType"), else "genai", which opens the empty Overview (traces) page.
# Links to an experiment therefore carry the parameter (:func:`experiment_page`).
WORKFLOW_TYPE = ("workflowType", "machine_learning")
SQLITE = "sqlite:///"

# The tags of a run's owner and its heartbeat (epoch ms), and the reason an abandoned run failed.
OWNER_HOST = "rollcast.owner.host"
OWNER_PID = "rollcast.owner.pid"
OWNER_START = "rollcast.owner.start"  # "<boot id>/<start, clock ticks after boot>"
HEARTBEAT = "rollcast.heartbeat"
FAILED_REASON = "rollcast.failed_reason"
# A run seen from another host is abandoned after this long without a heartbeat. Heartbeats
# come every minute (runs.HEARTBEAT_S), so six hours of silence is no slow step or a busy
# store, and a clock that is minutes off between hosts changes nothing.
STALE_AFTER_S = 6 * 3600.0
PROC = Path("/proc")
# In /proc/<pid>/stat after the ")" closing the command: the state (0) and start time (19).
STAT_STATE, STAT_START = 0, 19
ENDED_STATES = frozenset({"Z", "X"})  # a zombie has ended; its parent has not reaped it yet
RUNS_PAGE = 1000


@dataclass(frozen=True)
class Tracking:
    """An MLflow client on one store (tracking and registry), and the settings it came from.

    ``experiment_id`` is where new runs go; None on a reader, which logs no new runs.
    """

    client: MlflowClient
    settings: MlflowSettings
    experiment_id: str | None = None

    @property
    def uri(self) -> str:
        """The store's URI, for tracking and the registry alike."""
        return str(self.client.tracking_uri)

    def experiment(self) -> str:
        """The experiment id new runs go to; RegistryError on a reader."""
        if self.experiment_id is None:
            raise RegistryError(
                "this MLflow connection is a reader's: runs are logged through tracking.connect"
            )
        return self.experiment_id


def connect(mlflow_settings: MlflowSettings, store: StoreSettings) -> Tracking:
    """A client on the tracking URI, with the experiment created (and tagged) if missing.

    A local store gets its folder created, and its artifacts go beside the data
    (``DATA_DIR/mlartifacts``); a server decides where its artifacts go. Raises
    :class:`RegistryUnavailableError` when MLflow cannot be reached.
    """
    uri = mlflow_settings.mlflow_tracking_uri
    if uri.startswith(SQLITE):
        Path(uri.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = _client(uri)
        experiment_id = _experiment_id(client, mlflow_settings.mlflow_experiment, uri, store)
    except MlflowException as err:
        raise RegistryUnavailableError(f"cannot reach MLflow at {uri}: {err}") from err
    if uri.startswith(("http://", "https://")):
        logger.info("MLflow runs: %s", experiment_page(uri, experiment_id))
    return Tracking(client, mlflow_settings, experiment_id)


def connect_reader(mlflow_settings: MlflowSettings) -> Tracking:
    """A client on the registry to read models from, creating nothing.

    A sqlite store that does not exist is an error here: serve must not create an empty one
    and conclude there is no champion. Raises :class:`RegistryUnavailableError`.
    """
    uri = mlflow_settings.mlflow_tracking_uri
    if uri.startswith(SQLITE) and not Path(uri.removeprefix(SQLITE)).exists():
        raise RegistryUnavailableError(f"the MLflow store {uri} does not exist")
    try:
        return Tracking(_client(uri), mlflow_settings)
    except Exception as err:  # a store's own driver error (sqlite locked), a bad URI
        raise RegistryUnavailableError(f"cannot open the MLflow store {uri}: {err!r}") from err


def _client(uri: str) -> MlflowClient:
    # Both URIs given: a registry URI set elsewhere in the process must not be used instead.
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, name: str, uri: str, store: StoreSettings) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        location = (store.data_dir / "mlartifacts").resolve().as_uri() if local else None
        experiment_id = client.create_experiment(name, location)
    else:
        experiment_id = experiment.experiment_id
    key, kind = EXPERIMENT_KIND
    if experiment is None or experiment.tags.get(key) != kind:  # untagged, or set in the UI
        client.set_experiment_tag(experiment_id, key, kind)
    return str(experiment_id)


def experiment_page(ui_url: str, experiment_id: str) -> str:
    """The MLflow UI page of the experiment's training runs, as MLflow 3.17 opens it.

    >>> experiment_page("http://127.0.0.1:5000/", "1")
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning'
    """
    key, value = WORKFLOW_TYPE
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{key}={value}"


@dataclass(frozen=True)
class Owner:
    """The process that opened a run: its host, pid and start (None where there is no /proc).

    The start (boot id and start time) tells a live owner from another process that got its pid
    later, and an owner from before a reboot.
    """

    host: str
    pid: int
    start: str | None

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()))

    @classmethod
    def of_run(cls, tags: dict[str, str]) -> Owner | None:
        """The owner a run's tags name; None on a run opened without them."""
        if OWNER_HOST not in tags or not tags.get(OWNER_PID, "").isdigit():
            return None
        return cls(tags[OWNER_HOST], int(tags[OWNER_PID]), tags.get(OWNER_START) or None)

    def tags(self) -> dict[str, str]:
        return {OWNER_HOST: self.host, OWNER_PID: str(self.pid), OWNER_START: self.start or ""}

    def has_ended(self, here: Owner) -> bool | None:
        """Whether this owner's process has ended, asked from ``here``; None from another host."""
        if self.host != here.host:
            return None
        if self.start is None or here.start is None:  # no /proc: the pid alone
            return not _pid_exists(self.pid)
        if self.start.split("/")[0] != here.start.split("/")[0]:
            return True  # the host has rebooted since
        return process_start(self.pid) != self.start


def process_start(pid: int) -> str | None:
    """``<boot id>/<start ticks>`` of a running process; None if it has ended or /proc is absent."""
    try:
        boot_id = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[STAT_STATE] in ENDED_STATES:
        return None
    return f"{boot_id}/{fields[STAT_START]}"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def fail_abandoned_runs(
    tracking: Tracking, marked_by: str, stale_after_s: float = STALE_AFTER_S
) -> list[str]:
    """Mark FAILED the experiment's RUNNING runs whose process ended without finishing them.

    Each gets a ``rollcast.failed_reason`` tag naming its owner and ``marked_by`` (e.g.
    "run 3f2a…"), and ends at its last heartbeat. Returns their ids. Cost: one search per
    thousand RUNNING runs (there are few), and two writes per abandoned run.
    """
    client, here = tracking.client, Owner.this_process()
    now_ms = int(time.time() * 1000)
    marked = []
    for run in _running_runs(client, tracking.experiment()):
        why = abandonment(run, here, now_ms, stale_after_s)
        if why is None:
            continue
        run_id = run.info.run_id
        reason = f"{why}; marked failed by {marked_by} (process {here.pid} on {here.host})"
        client.set_tag(run_id, FAILED_REASON, reason)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED), last_beat_ms(run))
        marked.append(run_id)
    if marked:
        logger.warning("marked %d abandoned MLflow runs failed: %s", len(marked), marked)
    return marked


def abandonment(run: Run, here: Owner, now_ms: int, stale_after_s: float) -> str | None:
    """Why the RUNNING ``run`` is abandoned, seen from ``here`` at ``now_ms``; None if it is not."""
    owner = Owner.of_run(run.data.tags)
    ended = owner.has_ended(here) if owner is not None else None
    if owner is not None and ended:
        return (
            f"left RUNNING by process {owner.pid} on {owner.host}, which ended without "
            "finishing it (killed?)"
        )
    silent_s = (now_ms - last_beat_ms(run)) / 1000
    if ended is None and silent_s > stale_after_s:
        who = f"process {owner.pid} on {owner.host}" if owner else "a process Rollcast cannot name"
        return (
            f"left RUNNING by {who}, with no heartbeat for {silent_s / 3600:.1f} h "
            f"(abandoned after {stale_after_s / 3600:g} h)"
        )
    return None


def last_beat_ms(run: Run) -> int:
    """When the run last showed life: its latest heartbeat, else its start (epoch ms)."""
    beat = run.data.tags.get(HEARTBEAT, "")
    return max(int(beat) if beat.isdigit() else 0, run.info.start_time or 0)


def _running_runs(client: MlflowClient, experiment_id: str) -> Iterator[Run]:
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            "attributes.status = 'RUNNING'",
            max_results=RUNS_PAGE,
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return
