"""Rollcast: rolling multi-step forecasts from Kafka streams.

The core (``contract``, ``windows``, ``recipe``, ``model``, ``files``, ``train``, ``forecast``,
``evaluate``, ``backtest``, ``training_data``, ``stats``, ``progress``) imports only numpy, pandas
and torch. Kafka, MLflow, Delta Lake and Prefect live at the edges (``kafka_io``; ``tracking``,
``runs``, ``packaging``, ``registry``, ``monitoring``; ``delta_store``; ``flows/``), composed by
``wiring`` (ingest, serve) and ``training`` (train, tune). docs/ARCHITECTURE.md is the map.

The errors below are the taxonomy every layer shares; the ``rollcast`` command turns each kind
into its exit code (README "Exit codes").
"""


class RollcastError(Exception):
    """Base class of every error Rollcast raises on purpose."""


class ConfigurationError(RollcastError):
    """A setting is missing or wrong: retrying cannot help, the operator has to change it."""


class InvalidFileError(ConfigurationError):
    """A file an operator passed is too large, unreadable or not of the expected schema."""


class ResourceError(RollcastError):
    """The machine lacks what the work needs (a full disk, no GPU): retrying cannot help until
    an operator frees or adds it."""


class OutageError(RollcastError):
    """A service Rollcast depends on (broker, registry, object store) did not answer: retrying
    later may help."""


# Exit codes of the `rollcast` commands, for schedulers and supervisors (README "Exit codes").
EXIT_OK = 0
EXIT_BUG = 1  # an unexpected error: a traceback, a bug to report
EXIT_OPERATOR = 2  # configuration, a file passed in, or a resource: an operator must act
EXIT_USAGE = 64  # the command line itself is wrong (sysexits EX_USAGE)
EXIT_OUTAGE = 75  # a service was unreachable: try again later (sysexits EX_TEMPFAIL)
