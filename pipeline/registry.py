"""The model registry: the champion alias, promotion, the data contract and safe loading.

Promotion moves the ``champion`` alias; files are never copied. A version is loaded from its
checkpoint alone (``weights_only=True``), never by unpickling what MLflow stored. Every function
takes a :class:`~pipeline.tracking.Tracking` (a client on one store), made by
:func:`pipeline.tracking.connect` or :func:`pipeline.tracking.connect_reader`.

Two errors: :class:`RegistryError` (no usable model, or MLflow refused an operation) and
:class:`RegistryUnavailableError` (MLflow could not be asked at all).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
from mlflow.exceptions import MlflowException

from pipeline import ConfigurationError
from pipeline.contract import DataContract
from pipeline.forecast import LoadedForecaster
from pipeline.model import load_checkpoint
from pipeline.packaging import CHECKPOINT_FILE
from pipeline.tracking import (
    NOT_FOUND_CODES,
    RegistryError,
    RegistryUnavailableError,
    Tracking,
)

# The errors are the connection's (tracking.py); callers know them by this module.
__all__ = ["NOT_FOUND_CODES", "RegistryError", "RegistryUnavailableError"]

logger = logging.getLogger(__name__)

# A registered model's data contract: {"channels": [...], "freq": "1h", "max_gap": 3}.
CONTRACT_TAG = "rollcast.data_contract"


@dataclass(frozen=True)
class LoggedVersion:
    """A registered version and the run that logged it."""

    run_id: str
    version: str


def champion_version(tracking: Tracking) -> str | None:
    """The version the champion alias points at; None if there is no champion yet.

    Raises :class:`RegistryUnavailableError` when the registry cannot answer.
    """
    settings = tracking.settings
    try:
        found = tracking.client.get_model_version_by_alias(
            settings.model_name, settings.champion_alias
        )
    except MlflowException as err:
        if err.error_code in NOT_FOUND_CODES:
            return None
        raise RegistryUnavailableError(f"cannot read the champion alias: {err}") from err
    except Exception as err:  # a store's own driver error (sqlite locked), a network error
        raise RegistryUnavailableError(f"cannot read the champion alias: {err!r}") from err
    return str(found.version)


def load_version(tracking: Tracking, version: str) -> LoadedForecaster:
    """Download one version's checkpoint and rebuild it, never unpickling arbitrary code.

    The download goes to a temporary folder, removed once the weights are in memory. The
    version's files are found through the client: MLflow resolves a ``models:/`` URI on its
    process-global registry URI, whatever registry URI the download is given.
    """
    name = tracking.settings.model_name
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="rollcast-model-") as tmp:
        try:
            files = tracking.client.get_model_version_download_uri(name, version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=files, dst_path=tmp, tracking_uri=tracking.uri
            )
        except MlflowException as err:
            failure = (
                RegistryError if err.error_code in NOT_FOUND_CODES else RegistryUnavailableError
            )
            raise failure(f"cannot download {uri}: {err}") from err
        checkpoint = next(Path(local).rglob(CHECKPOINT_FILE), None)
        if checkpoint is None:
            raise RegistryError(f"{uri} has no {CHECKPOINT_FILE}: was it logged by Rollcast?")
        return LoadedForecaster(name, version, load_checkpoint(checkpoint))


def load_champion(tracking: Tracking) -> LoadedForecaster:
    """The champion, loaded as :func:`load_version` loads a version; RegistryError if none."""
    version = champion_version(tracking)
    if version is None:
        settings = tracking.settings
        raise RegistryError(
            f"model {settings.model_name!r} has no {settings.champion_alias!r} alias: "
            "run `rollcast train` first"
        )
    return load_version(tracking, version)


def promote(tracking: Tracking, version: str) -> None:
    """Move the champion alias to ``version``."""
    settings = tracking.settings
    tracking.client.set_registered_model_alias(
        settings.model_name, settings.champion_alias, version
    )
    logger.info("%s version %s is now %s", settings.model_name, version, settings.champion_alias)


def tag_version(tracking: Tracking, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        tracking.client.set_model_version_tag(tracking.settings.model_name, version, key, value)


def record_verdict(
    tracking: Tracking, logged: LoggedVersion, margins: dict[str, float], reason: str
) -> None:
    """The promotion decision on the training run (margins as metrics) and on the version."""
    client = tracking.client
    for name, value in margins.items():
        client.log_metric(logged.run_id, name, value)
    client.set_tag(logged.run_id, "rollcast.promotion", reason)
    tag_version(tracking, logged.version, {"promotion": reason})


class ContractError(RegistryError, ConfigurationError):
    """A model cannot replace a registered model of another data contract."""


def require_contract(tracking: Tracking, contract: DataContract) -> None:
    """Refuse a challenger that could not replace the registered model; record a new model's.

    One registered model per data contract: the first training creates the model with its
    contract (a tag), and a version of other channels or another step never takes its alias.
    """
    client, name = tracking.client, tracking.settings.model_name
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as err:
        if err.error_code not in NOT_FOUND_CODES:
            raise RegistryUnavailableError(f"cannot read {name}: {err}") from err
        client.create_registered_model(name, tags={CONTRACT_TAG: contract.tag()})
        return
    if CONTRACT_TAG not in tags:
        client.set_registered_model_tag(name, CONTRACT_TAG, contract.tag())
        return
    registered = DataContract.from_tag(tags[CONTRACT_TAG], max_gap_if_missing=contract.max_gap)
    if registered.differences(contract):
        raise ContractError(
            f"the registered model {name!r} forecasts {registered.describe()}; "
            f"this data has {contract.describe()}, so its model could never replace it. "
            "Set ROLLCAST_MODEL_NAME to a new name: one registered model per data contract"
        )
