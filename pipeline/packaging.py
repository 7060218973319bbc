"""The logged model: a pyfunc that rebuilds the forecaster from its checkpoint, and logging it.

The pyfunc's ``load_context`` rebuilds the network from a checkpoint (loaded with
``weights_only=True``) and its ``predict`` hands a frame of recent observations to
:func:`pipeline.forecast.forecast_frame`, the inference the serve loop uses too.
:func:`log_model` logs it on a run, as an MLflow 3 LoggedModel with a signature and an input
example, and registers it as a new version.

MLflow 3 has no client form of model logging (``MlflowClient`` has no ``log_model``):
``Model.log``, behind ``mlflow.pyfunc.log_model``, makes its own clients on the process-global
tracking and registry URIs, and so does the registry store when it resolves the new version's
``models:/<model_id>`` source. So that one call runs inside :func:`_pointed_at`, which sets both
URIs to the client's for the duration of the call and restores them after (the environment
variables MLflow mirrors them in too), under a lock; meanwhile another thread's fluent MLflow
call would see them too, and Rollcast makes none. Everything else goes through the client:
the LoggedModel is created by it beforehand (in the run's experiment, with the run's params and
the source tags MLflow gives one), and the run is named by id, never made active. Nothing else
in Rollcast touches MLflow's global state.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModel
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_uris
from mlflow.tracking._tracking_service import utils as tracking_uris
from mlflow.tracking.context import registry as context_registry

from pipeline.forecast import forecast_frame
from pipeline.model import Forecaster, load_checkpoint, save_checkpoint
from pipeline.tracking import Tracking

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
CHECKPOINT_FILE = "forecaster.pt"
MODEL_ARTIFACT_PATH = "model"
PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
# Where mlflow.set_tracking_uri and set_registry_uri mirror their URI for subprocesses.
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_GLOBAL_URIS = threading.Lock()  # one scoped change of MLflow's global URIs at a time


class ForecasterPyfunc(PythonModel):
    """Recent observations in (``series``, ``ts``, channels), forecasts out (plus ``step``).

    A thin shell over :func:`pipeline.forecast.forecast_frame`, the inference the serve loop
    uses too. ``ts`` is ISO-8601 text in and out, as on the wire (MLflow schemas hold no time
    zones).
    """

    def load_context(self, context: Any) -> None:
        self.model = load_checkpoint(Path(context.artifacts[CHECKPOINT_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return forecast_frame(self.model, model_input)


def log_model(tracking: Tracking, run_id: str, model: Forecaster, example: pd.DataFrame) -> str:
    """Log ``model`` on the run as its pyfunc and register it as a new version; return it.

    The LoggedModel is named ``model``; its signature is inferred from ``example`` and the
    forecast of it, and ``example`` is its input example. The version is one of
    ``tracking.settings.model_name`` (the registered model is created if missing).
    """
    model = model.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(model, Path(tmp) / CHECKPOINT_FILE)
        signature = forecast_signature(model, example)
        logged = _new_logged_model(tracking.client, run_id)
        with _pointed_at(tracking.uri), _printed_to_debug():
            # What mlflow.pyfunc.log_model calls; only this takes the run by id, not active.
            info = Model.log(
                None,
                mlflow.pyfunc,
                name=MODEL_ARTIFACT_PATH,
                run_id=run_id,
                model_id=logged.model_id,
                registered_model_name=tracking.settings.model_name,
                python_model=str(PYFUNC_ENTRY),
                artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                signature=signature,
                input_example=example,
                # Listing them avoids MLflow's slow import-capturing subprocess.
                pip_requirements=_pip_requirements(),
            )
    return str(info.registered_model_version)


def _new_logged_model(client: MlflowClient, run_id: str) -> LoggedModel:
    """A PENDING LoggedModel of the run, as ``mlflow.pyfunc.log_model`` would create it: in
    the run's experiment, with the run's params and MLflow's source tags (user, entry point)."""
    run = client.get_run(run_id)
    return client.create_logged_model(
        run.info.experiment_id,
        name=MODEL_ARTIFACT_PATH,
        source_run_id=run_id,
        tags=context_registry.resolve_tags(),
        params=dict(run.data.params),
    )


@contextmanager
def _printed_to_debug() -> Iterator[None]:
    """What MLflow prints to stderr inside the block ("Registered model ... already exists",
    "Created version ...": print, not logging) goes to this module's log at DEBUG instead."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            logger.debug("mlflow: %s", line)


@contextmanager
def _pointed_at(uri: str) -> Iterator[None]:
    """MLflow's global tracking and registry URIs set to ``uri`` inside the block alone.

    On exit, both URIs and their environment variables are as they were, whatever they were
    (set by the application, by the environment, or not at all).
    """
    with _GLOBAL_URIS:
        saved = (tracking_uris._tracking_uri, registry_uris._registry_uri)
        saved_variables = {name: os.environ.get(name) for name in URI_VARIABLES}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            tracking_uris._tracking_uri, registry_uris._registry_uri = saved
            for name, value in saved_variables.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def forecast_signature(model: Forecaster, example: pd.DataFrame) -> ModelSignature:
    """The pyfunc's signature, from an example history and its forecast.

    MLflow hints that the forecast's integer ``step`` column could not hold a missing value;
    a step is never missing, so the hint is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        return infer_signature(example, forecast_frame(model, example))


def _pip_requirements() -> list[str]:
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]
