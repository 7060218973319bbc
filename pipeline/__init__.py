"""Rollcast: rolling multi-step forecasts from Kafka streams.

The core (``contract``, ``windows``, ``model``, ``train``, ``forecast``, ``evaluate``,
``backtest``, ``training_data``, ``stats``) imports only numpy, pandas and torch. Kafka, MLflow,
Parquet and Prefect live at the edges (``kafka_io``; ``tracking``, ``runs``, ``packaging``,
``registry``, ``monitoring``; ``parquet_store``; ``flows/``), composed by ``wiring`` (ingest,
serve) and ``training`` (train, tune). docs/ARCHITECTURE.md is the map.
"""


class RollcastError(Exception):
    """Base class of every error Rollcast raises on purpose."""


class ConfigurationError(RollcastError):
    """A setting is missing or wrong: retrying cannot help, the operator has to change it."""
