"""Connecting to MLflow: a client on the configured store, and the experiment runs go to.

:func:`connect` (training, tuning, registering, backtests) makes sure the experiment exists;
:func:`connect_reader` (serve, the drift check) creates nothing, and refuses a sqlite store that
is not there. Both return a :class:`Tracking`, which every MLflow call of Rollcast takes: the
library never points MLflow's process-global ("fluent") state at a store. The one call MLflow
offers no client form of, logging a model, is confined to :func:`pipeline.packaging.log_model`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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

# MLflow 3's UI opens an experiment without this tag on its GenAI pages, not on the runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
SQLITE = "sqlite:///"


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
    if experiment is None or EXPERIMENT_KIND[0] not in experiment.tags:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    return str(experiment_id)
