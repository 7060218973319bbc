"""Rollcast: rolling multi-step forecasts from Kafka streams.

The core (``windows``, ``model``, ``train``, ``evaluate``) imports only numpy, pandas and torch.
Kafka, MLflow and Prefect live at the edges (``kafka_io``, ``registry``, ``flows/``).
"""


class RollcastError(Exception):
    """Base class of every error Rollcast raises on purpose."""


class ConfigurationError(RollcastError):
    """A setting is missing or wrong: retrying cannot help, the operator has to change it."""
