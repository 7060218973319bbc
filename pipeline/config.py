"""Typed, frozen settings: one class per component, every field an environment variable.

Each field ``foo`` is read from ``ROLLCAST_FOO``. Settings are read once, at an entry point
(the CLI, a flow), and passed down; no other module reads the environment.

>>> KafkaSettings(bootstrap_servers="localhost:9092").topic_forecasts
'forecasts'
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from pipeline import ConfigurationError
from pipeline.contract import DEFAULT_MAX_GAP
from pipeline.covariates import CalendarError, check_calendar
from pipeline.intervals import DEFAULT_GAIN, MAX_LEVELS, IntervalError, check_levels
from pipeline.recipe import MAX_MEMBERS, TRAINING_NORM, ForecasterConfig, TrainConfig
from pipeline.records import (
    DEFAULT_MAX_JUMP_STEPS,
    DEFAULT_MAX_RECORD_BYTES,
    FLOAT32_MAX,
    RecordPolicy,
)
from pipeline.windows import MAX_VAL_FOLDS, VAL_FOLDS, freq_to_ms

ENV_PREFIX = "ROLLCAST_"


def _settings_config() -> SettingsConfigDict:
    # No float setting has a use for inf or NaN: each is a count, a limit or a period.
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        protected_namespaces=(),
        allow_inf_nan=False,
    )


# Upper bounds shared by several settings: longer is a typo or a unit mistake (ms for s).
MONTH_S = 30 * 24 * 3600.0
DAY_S = 24 * 3600.0
# A series cap past this holds more state than a machine has (about 0.5 KB a series).
MAX_SERIES_CAP = 100_000_000
MAX_PORT = 65535
# What pydantic reports for a value that is not of the field's type, in the operator's words.
TYPE_WORDS = {
    "int_parsing": "an integer (ASCII digits)",
    "int_from_float": "an integer (ASCII digits)",
    "int_type": "an integer (ASCII digits)",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
}
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
# A name (a group, a database, a model): not blank, no space at either end, no control
# character or line break anywhere. A function, not a regex pattern: Python's re has no \p{C},
# and Prefect checks a deployment's parameter schema (these settings) with it.
NAME_RULE = "a name: printable, not blank, no space at either end"


def _checked_calendar(region: str | None, timezone: str) -> bool:
    """True, or ValueError (what pydantic reports) for an unknown region or time zone."""
    try:
        check_calendar(region, timezone)
    except CalendarError as err:
        raise ValueError(str(err)) from err
    return True


def _printable_name(name: str) -> str:
    unprintable = any(
        unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") for c in name
    )
    if unprintable or name != name.strip():
        raise ValueError(NAME_RULE)
    return name


Name = Annotated[
    str,
    Field(min_length=1, max_length=249, description=NAME_RULE),
    AfterValidator(_printable_name),
]
# A Kafka topic: what a broker accepts (1 to 249 of letters, digits, '.', '_', '-').
TopicName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9._-]{1,249}$",
        description="a Kafka topic: 1 to 249 of A-Z, a-z, 0-9, '.', '_', '-'",
    ),
]


class RollcastSettings(BaseSettings):
    """Base of every settings class: a refused value raises :class:`ConfigurationError`, one
    line per refused setting, naming its ``ROLLCAST_*`` variable and what it accepts."""

    model_config = _settings_config()

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:
            problems = err.errors(include_url=False)
            lines = [refusal(type(self), problem, set(values)) for problem in problems]
            raise ConfigurationError("; ".join(lines)) from err
        except SettingsError as err:  # a complex field (a JSON object) that is not JSON
            found = re.search(r'field "(\w+)"', str(err))
            variable = ENV_PREFIX + (found.group(1).upper() if found else "*")
            raise ConfigurationError(f"{variable}: must be a JSON object ({err})") from err


def refusal(settings_class: type[BaseSettings], problem: Any, given: set[str]) -> str:
    """One refused setting: ``ROLLCAST_FOO=value: must be ...`` (a secret's value unshown);
    a value the caller passed (a command-line option) rather than the environment says so."""
    field = str(problem["loc"][0]) if problem["loc"] else ""
    declared = settings_class.model_fields.get(field)
    secret = declared is None or "SecretStr" in str(declared.annotation)
    shown = "" if secret or "input" not in problem else f"={shown_value(problem['input'])}"
    accepted = accepted_text(problem, declared)
    if field in given:
        return f"{ENV_PREFIX}{field.upper()} (given as {field}{shown}): {accepted}"
    return f"{ENV_PREFIX}{field.upper()}{shown}: {accepted}"


def shown_value(value: Any) -> str:
    """A value as the operator typed it; quoted when blank, padded or unprintable."""
    if isinstance(value, str) and value and value.isprintable() and value.strip() == value:
        return value
    return repr(value)


def accepted_text(problem: Any, declared: FieldInfo | None) -> str:
    """What the field accepts, from the kind of error and the field's declared range."""
    kind, ctx = problem["type"], problem.get("ctx") or {}
    span = range_text(declared) if declared is not None else ""
    note = f" ({declared.description})" if declared is not None and declared.description else ""
    if kind in RANGE_ERRORS:
        return f"must be {span}{note}"
    if kind in TYPE_WORDS:
        return f"must be {TYPE_WORDS[kind]}{' ' + span if span else ''}{note}"
    if (kind.startswith("string_") or kind == "too_short") and note:
        return f"must be {declared.description}"  # type: ignore[union-attr]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    return str(problem["msg"]).removeprefix("Value error, ")


def range_text(declared: FieldInfo) -> str:
    """``between 1 and 65535``, ``at least 0``, ``more than 0 and at most 3600``, or ''."""
    bounds: dict[str, Any] = {}
    for constraint in field_constraints(declared):
        for name in ("ge", "gt", "le", "lt"):
            if getattr(constraint, name, None) is not None:
                bounds[name] = getattr(constraint, name)
    if "ge" in bounds and "le" in bounds:
        return f"between {bound_text(bounds['ge'])} and {bound_text(bounds['le'])}"
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    return " and ".join(f"{words[name]} {bound_text(bound)}" for name, bound in bounds.items())


def bound_text(bound: float) -> str:
    """A bound as an operator would type it: ``65535``, ``0.1``, ``3.40282e+38``."""
    if abs(bound) >= 1e15:
        return f"{bound:.6g}"
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def field_constraints(declared: FieldInfo) -> list[Any]:
    """The field's constraints, also where they sit inside ``Annotated[...] | None``."""
    found = list(declared.metadata)
    for member in get_args(declared.annotation):
        if get_origin(member) is Annotated:
            for extra in member.__metadata__:
                found.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return found


class KafkaSettings(RollcastSettings):
    """Where the stream lives. Security fields are passed through to the Kafka clients."""

    model_config = _settings_config()

    bootstrap_servers: str | None = None
    topic_observations: TopicName = "observations"
    topic_forecasts: TopicName = "forecasts"
    topic_deadletter: TopicName = "deadletter"
    # Up to 10,000: past that a broker spends its memory on partitions, not records.
    topic_partitions: Annotated[int, Field(ge=1, le=10_000)] = 3
    client_id: Name = "rollcast"
    # How long the broker may hold a fetch that has no data yet: a bound on added latency
    # (at most 30 s: below the clients' request timeout).
    fetch_max_wait_ms: Annotated[int, Field(ge=1, le=30_000)] = 10
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # What kafka-python can do.
    sasl_mechanism: (
        Literal["PLAIN", "GSSAPI", "OAUTHBEARER", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None
    ) = None
    sasl_plain_username: str | None = None
    # A secret: shown as ********** wherever settings are logged or stored (Prefect parameters).
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def security_options(self) -> dict[str, Any]:
        """The kafka-python security keyword arguments that are set."""
        names = (
            "security_protocol",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
        )
        options = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.sasl_plain_password is not None:
            options["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        return options


class StoreSettings(RollcastSettings):
    """The series table and the local state folder."""

    model_config = _settings_config()

    data_dir: Path = Path(".rollcast")
    # The series table: a path or an object-store URI ("s3://bucket/series"); None: a local
    # table under data_dir. delta-rs reads the AWS_* variables itself.
    store_uri: str | None = None
    # delta-rs storage options (a JSON object), e.g. {"AWS_ENDPOINT_URL": "http://minio:9000"}.
    store_options: dict[str, str] = Field(default_factory=dict)
    # Compaction keeps files other versions need for this long (time travel, slow readers).
    store_retention_hours: Annotated[float, Field(ge=0, le=24 * 3650)] = 168.0
    # Each series' step is inferred from its readings (the median spacing); a pandas frequency
    # here ("1h", "30min") overrides it for every series.
    freq: str | None = None

    # Gaps of up to this many steps are interpolated; longer ones split the series (at most
    # 10,000: a longer gap is an outage, and filling it would invent the data).
    max_gap: Annotated[int, Field(ge=1, le=10_000)] = DEFAULT_MAX_GAP
    # Recurring closed periods (nights, weekends of business-hours data): "auto" finds them in
    # the data and trains on the open steps only, "continuous" counts every step (a night is a
    # gap), "open_hours" requires them (a series without is left out, saying why).
    gap_policy: Literal["auto", "continuous", "open_hours"] = "auto"

    @field_validator("freq")
    @classmethod
    def _fixed_step(cls, freq: str | None) -> str | None:
        """A step of fixed length ("30min", "1h", "1D"); months and the like are refused."""
        if freq is not None:
            try:
                step_ms = freq_to_ms(freq)
            except (ValueError, TypeError, OverflowError) as err:
                raise ValueError(f"{freq!r} is not a fixed-length pandas frequency") from err
            if step_ms <= 0:
                raise ValueError(f"{freq!r} is not a positive step: use e.g. 30min, 1h, 1D")
        return freq

    @property
    def table_uri(self) -> str:
        """Where the series table is."""
        return self.store_uri or str(self.data_dir / "series")

    @property
    def legacy_store_dir(self) -> Path:
        """Where the one-Parquet-file-per-series store of earlier versions was."""
        return self.data_dir / "store"


def local_tracking_uri() -> str:
    """A SQLite tracking store in the data folder (``ROLLCAST_DATA_DIR``), beside the table."""
    return f"sqlite:///{StoreSettings().data_dir / 'mlflow.db'}"


class MlflowSettings(RollcastSettings):
    """Tracking and registry."""

    model_config = _settings_config()

    # Runs and the registry; by default in the data folder, whose artifacts folder holds
    # the runs' files (tracking.connect), so one ROLLCAST_DATA_DIR moves both.
    mlflow_tracking_uri: str = Field(default_factory=local_tracking_uri)
    mlflow_experiment: Name = "rollcast"
    model_name: Name = "rollcast-forecaster"
    champion_alias: Name = "champion"


# The forecaster's shape and training defaults are defined once, on the dataclasses the core
# uses; the settings below only read them.
SHAPE = ForecasterConfig(channels=())
TRAINING = TrainConfig()


class ModelSettings(RollcastSettings):
    """Shape of the forecaster trained by the train flow (defaults: :class:`ForecasterConfig`)."""

    model_config = _settings_config()

    # The longest lookback tried; the train flow shortens it to what the data can train with.
    # Caps: a window is (lookback + horizon) x channels floats, held per series and per sample.
    lookback: Annotated[int, Field(ge=1, le=100_000)] = SHAPE.lookback
    horizon: Annotated[int, Field(ge=1, le=10_000)] = SHAPE.horizon
    architecture: Literal["lstm", "dlinear"] = "lstm"
    cell: Literal["lstm", "gru", "peephole"] = SHAPE.cell  # type: ignore[assignment]
    hidden_size: Annotated[int, Field(ge=1, le=4096)] = SHAPE.hidden_size  # memory: 4096² a gate
    num_layers: Annotated[int, Field(ge=1, le=16)] = SHAPE.num_layers  # deeper: untrainable
    dropout: Annotated[float, Field(ge=0, lt=1)] = SHAPE.dropout
    bidirectional: bool = SHAPE.bidirectional
    # What each window's level is: "season" forecasts the residual over seasonal-naive, of
    # ROLLCAST_SEASON's period (or the one chosen from the data); "auto" trains "last" and
    # "season" and keeps the better on validation (twice the training). DLinear reads no norm.
    norm: Literal["last", "mean", "none", "season", "auto"] = TRAINING_NORM  # type: ignore[assignment]
    channel_independent: bool = SHAPE.channel_independent
    # Steps per input and output segment; lookback is cut to a multiple of it.
    segment_len: Annotated[int, Field(ge=1, le=100_000)] = SHAPE.segment_len  # the lookback's cap
    decoder: Literal["pmf", "linear"] = SHAPE.decoder  # type: ignore[assignment]
    # The output head and its training loss (pipeline.model.HEADS).
    loss: Literal["mse", "l1", "pinball"] = SHAPE.loss  # type: ignore[assignment]
    # Period of the seasonal-naive baseline, in steps. None: a day of steps at the store's
    # frequency (24 for hourly data, 48 half-hourly), a week for daily data.
    season: Annotated[int, Field(ge=1, le=100_000)] | None = None  # the lookback's cap
    # Future-known calendar features (time of day, week and year) for lookback and horizon.
    calendar: bool = SHAPE.calendar
    # A public-holiday region for the calendar ("GB", "AU-VIC"); none by default.
    holidays: Annotated[str, Field(min_length=2, max_length=20)] | None = SHAPE.holidays
    # The IANA time zone the calendar is read in (holidays and time of day are local).
    timezone: Annotated[str, Field(min_length=1, max_length=64)] = SHAPE.timezone
    # The channels forecast, as JSON (["load"]); the other channels are read as inputs only.
    # Empty: every channel is forecast.
    targets: tuple[Name, ...] = Field(default=SHAPE.targets, max_length=1000)
    # The coverage levels of the prediction intervals, as JSON ([0.8, 0.95]): each between 0
    # and 1; training calibrates them on validation, serve publishes and adapts them.
    interval_levels: tuple[float, ...] = Field(
        default=SHAPE.interval_levels, min_length=1, max_length=MAX_LEVELS
    )

    @field_validator("interval_levels")
    @classmethod
    def _levels(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        """Sorted levels, each strictly between 0 and 1, none twice."""
        try:
            return check_levels(levels)
        except IntervalError as err:
            raise ValueError(str(err)) from None

    @field_validator("holidays")
    @classmethod
    def _known_region(cls, region: str | None) -> str | None:
        """A region the ``holidays`` package knows."""
        _checked_calendar(region, "UTC")
        return region

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, timezone: str) -> str:
        """An IANA time zone."""
        _checked_calendar(None, timezone)
        return timezone


class TrainSettings(RollcastSettings):
    """Optimisation settings of the train flow (defaults: :class:`TrainConfig`)."""

    model_config = _settings_config()

    # Step counts up to 10^8: days of training at the fastest step rates.
    max_steps: Annotated[int, Field(ge=1, le=100_000_000)] = TRAINING.max_steps
    time_limit_s: Annotated[float, Field(gt=0, le=MONTH_S)] | None = TRAINING.time_limit_s
    eval_every: Annotated[int, Field(ge=1, le=100_000_000)] | None = TRAINING.eval_every
    patience: Annotated[int, Field(ge=1, le=100_000_000)] = TRAINING.patience
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = TRAINING.batch_size  # memory
    # Past 10 a rate, a decay or a clip of 10^6 no longer limits anything: a typo.
    learning_rate: Annotated[float, Field(gt=0, le=10)] = TRAINING.learning_rate
    weight_decay: Annotated[float, Field(ge=0, le=10)] = TRAINING.weight_decay
    grad_clip: Annotated[float, Field(gt=0, le=1e6)] = TRAINING.grad_clip
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # Validation in this many blocks spread over the latest half of each series (rolling
    # origins, windows.validation_blocks); 1: the last val_fraction in one block.
    val_folds: Annotated[int, Field(ge=1, le=MAX_VAL_FOLDS)] = VAL_FOLDS
    # Seeds trained and averaged (a seed ensemble), or "auto": three, averaged only where the
    # mean beats the first seed on validation. Each seed costs one more training.
    ensemble: Annotated[int, Field(ge=1, le=MAX_MEMBERS)] | Literal["auto"] = 1
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = TRAINING.seed  # numpy's seed range
    device: Name = TRAINING.device
    schedule: Literal["constant", "cosine", "halving"] = TRAINING.schedule  # type: ignore[assignment]
    # A challenger must beat seasonal-naive on the validation windows to become champion.
    promotion_gate: bool = True
    # A JSON file of tuned settings (written by `rollcast tune`) that override the ones above.
    tuned_config: Path | None = None
    # Start the challenger from the champion's weights when its config is the same, with a
    # budget of warm_start_steps instead of max_steps (same early stopping, same gate).
    warm_start: bool = False
    warm_start_steps: Annotated[int, Field(ge=1, le=100_000_000)] = 250
    # Optuna trials the train flow runs before training (0: none; see `rollcast tune`).
    tune_trials: Annotated[int, Field(ge=0, le=10_000, description="0: no search")] = 0
    tune_timeout_s: Annotated[float, Field(gt=0, le=MONTH_S)] | None = None
    # One trial's limit: a candidate still training after it is stopped as "capped" (the
    # first trial, the defaults, runs to the end). None: no limit.
    tune_trial_timeout_s: Annotated[float, Field(gt=0, le=MONTH_S)] | None = None
    # Memory for the rows training reads: a larger table is sampled (its newest rows), and
    # the run says so. About 48 bytes per stored row, regularized.
    train_memory_mb: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] = 4096
    # Windows one epoch draws from: more are sampled evenly (bounds the index, 8 B a window).
    max_windows: Annotated[int, Field(ge=1, le=1_000_000_000)] = 2_000_000
    # Train on this version of the series table (Delta time travel); None: the newest.
    data_version: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None  # Delta's int64


class ScheduleSettings(RollcastSettings):
    """When the deployed flows run by themselves (``python -m flows.deployments``)."""

    model_config = _settings_config()

    # New observations land in the store within this long.
    # At least 1 s: a run a second is the scheduler's whole load; at most a month.
    ingest_interval_s: Annotated[float, Field(ge=1, le=MONTH_S)] = 300.0
    # Retrain nightly, after a day of fresh data (cron, the Prefect server's time zone: UTC).
    train_cron: str = "0 3 * * *"
    # How often the drift flow compares serve's online error with the champion's validation.
    drift_check_interval_s: Annotated[float, Field(ge=1, le=MONTH_S)] = 900.0

    @field_validator("train_cron")
    @classmethod
    def _cron(cls, cron: str) -> str:
        """A cron Prefect schedules by: checked by Prefect's own schedule class, at start."""
        from prefect.client.schemas.schedules import CronSchedule  # only here: a heavy import

        try:
            CronSchedule(cron=cron)
        except ValueError as err:
            raise ValueError(f"{cron!r} is not a cron Prefect accepts, e.g. '0 3 * * *'") from err
        return cron


class DriftSettings(RollcastSettings):
    """When serve's online error of the champion starts a retraining (flows/retrain.py)."""

    model_config = _settings_config()

    # Retrain when the online MSE exceeds the validation MSE by this factor...
    # (at most 1000: a larger factor never retrains; stop the drift flow instead).
    drift_ratio: Annotated[float, Field(gt=0, le=1000)] = 2.0
    # ...measured over at least this many forecast values (steps ahead x channels x forecasts).
    drift_min_scored: Annotated[int, Field(ge=1, le=1_000_000_000)] = 1000
    # ...or when the published intervals' online coverage falls this far below a level (0.15:
    # an 80% interval holding under 65% of the actuals), over as many values.
    drift_coverage_drop: Annotated[float, Field(gt=0, le=1)] = 0.15


class StackSettings(RollcastSettings):
    """`rollcast stack`: MLflow and Prefect on PostgreSQL, as docker-compose.yml runs them."""

    model_config = _settings_config()

    # A connection allowed to create databases; the servers get one database each on it.
    postgres_url: Annotated[SecretStr, Field(min_length=1, description="a PostgreSQL URL")] = (
        SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    )
    stack_mlflow_db: Name = "mlflow"
    stack_prefect_db: Name = "prefect"
    stack_host: Name = "127.0.0.1"  # loopback: neither server authenticates (deploy/README.md)
    stack_mlflow_port: Annotated[int, Field(ge=1, le=MAX_PORT)] = 5000
    stack_prefect_port: Annotated[int, Field(ge=1, le=MAX_PORT)] = 4200


class IngestSettings(RollcastSettings):
    """The ingest stage's consumer."""

    model_config = _settings_config()

    ingest_group: Name = "rollcast-ingest"
    # The ingest flow ends after this long without a new record.
    ingest_idle_s: Annotated[float, Field(gt=0, le=MONTH_S)] = 5.0
    # A flush (one table commit) holds at most this many records, and waits at most this long
    # after its first: fewer, larger files and commits, at the cost of that much latency.
    ingest_flush_records: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000
    ingest_flush_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Series whose state (channels, newest steps) ingest holds in memory: about 0.5 KB each.
    ingest_max_series: Annotated[int, Field(ge=1, le=MAX_SERIES_CAP)] = 1_000_000


class ServeSettings(RollcastSettings):
    """The serve stage's consumer and loop."""

    model_config = _settings_config()

    serve_group: Name = "rollcast-serve"
    serve_idle_s: Annotated[float, Field(gt=0, le=MONTH_S)] | None = None  # None: until stopped
    # How often serve logs its online MSE to the serving version's MLflow run (0: never).
    online_report_s: Annotated[float, Field(ge=0, le=DAY_S, description="0: never")] = 60.0
    # A member with no partitions this long after it starts says so in its log, and its idle
    # time (serve_idle_s) counts from then on.
    join_grace_s: Annotated[float, Field(gt=0, le=DAY_S)] = 30.0
    # Records per poll: one batch. Also the bound on records forecast twice after a crash
    # (at most a million: the batch is held in memory).
    max_poll_records: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    # Within a poll, the forecasts due are made and published (and acknowledged) at this many,
    # or this long after the first of them, so a record waits for its own batch, not the
    # poll's (pipeline.serve.BatchCap). Offsets are still committed once per poll.
    batch_forecasts: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    batch_ms: Annotated[float, Field(ge=0, le=60_000, description="0: one forecast a batch")] = 20.0
    # Live series held; the least recently seen is dropped beyond this.
    max_series: Annotated[int, Field(ge=1, le=MAX_SERIES_CAP)] = 100_000
    # Records re-read per gained partition to rebuild windows after a restart or rebalance
    # (at most 10^7: minutes of reading before the first forecast).
    rewind_records: Annotated[int, Field(ge=0, le=10_000_000, description="0: no rebuild")] = 50_000
    # How often the registry alias is checked for a new champion (at least 0.1 s: each check
    # is a registry call).
    champion_poll_s: Annotated[float, Field(ge=0.1, le=DAY_S)] = 30.0
    # Prometheus endpoint port; 0 turns it off.
    metrics_port: Annotated[int, Field(ge=0, le=MAX_PORT, description="0: off")] = 9108
    # The endpoint's address: loopback unless told otherwise (0.0.0.0 in a container).
    metrics_host: Name = "127.0.0.1"
    # Established series are never evicted by new keys: these are held apart, least recently
    # seen dropped first, until their window fills (a key flood churns only this pool).
    max_new_series: Annotated[int, Field(ge=1, le=MAX_SERIES_CAP)] = 10_000
    # The forecasts' wire format: "v1", a list of steps each with its time; "v2", one array
    # per channel with the model's prediction intervals (README: Forecast messages).
    forecast_format: Literal["v1", "v2"] = "v2"
    # The published intervals adapt apart in each group of series: the first this many fields
    # of a series key split at the separator ("eu/site-4" of "eu/site-4/meter-2", 2 fields of
    # "/"), at most 1,000 groups (pipeline.stats.SeriesGroups); 0: one group for every series.
    interval_group_fields: Annotated[int, Field(ge=0, le=16, description="0: one group")] = 0
    interval_group_separator: Annotated[
        str, Field(min_length=1, max_length=8), AfterValidator(_printable_name)
    ] = "/"
    # The model's arithmetic in serve: "auto" is bfloat16 where the chip computes it natively
    # (about twice as fast, the same MSE to five digits), float32 elsewhere (pipeline.forecast).
    inference_precision: Literal["float32", "bfloat16", "auto"] = "auto"
    # How fast the published intervals follow their misses: each miss widens a radius by this
    # share of its calibrated value, each hit narrows it by a (1 - level) share of that.
    interval_gain: Annotated[float, Field(ge=0, le=1, description="0: never adapted")] = (
        DEFAULT_GAIN
    )


class RecordSettings(RollcastSettings):
    """What a record must be to be accepted, the same in ingest, serve and training.

    See :class:`pipeline.records.RecordPolicy`.
    """

    model_config = _settings_config()

    # At most 64 MiB: a record is held whole in memory, a batch of them at a time.
    max_record_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = DEFAULT_MAX_RECORD_BYTES
    # A magnitude limit on every value; the default only asks for finite float32.
    max_abs_value: Annotated[float, Field(gt=0, le=FLOAT32_MAX)] = FLOAT32_MAX
    # How far past the stream's time (when a record was produced) its timestamp may lie (at
    # most a year: further is a clock or unit mistake).
    max_ahead_s: Annotated[float, Field(ge=0, le=366 * DAY_S)] = 24 * 3600.0
    # Steps of event time a step waits for out-of-order records; older ones are `late` (at
    # most 10,000: each waiting step delays its forecast and is held in memory).
    grace_steps: Annotated[int, Field(ge=0, le=10_000, description="0: no wait")] = 0
    # Steps a record may lie ahead of its series' newest step on its own word; a further one
    # waits for a second record to confirm it, else is `future` (1 to a million: ~never held).
    max_jump_steps: Annotated[int, Field(ge=1, le=1_000_000)] = DEFAULT_MAX_JUMP_STEPS

    def policy(self) -> RecordPolicy:
        return RecordPolicy(
            max_record_bytes=self.max_record_bytes,
            max_abs_value=self.max_abs_value,
            max_ahead_ms=round(self.max_ahead_s * 1000),
            grace_steps=self.grace_steps,
            max_jump_steps=self.max_jump_steps,
        )


class Settings(BaseModel):
    """Every component's settings, as the flows take them: a part not given is read from
    ``ROLLCAST_*`` variables when the bundle is made.

    >>> Settings(kafka=KafkaSettings(bootstrap_servers="h:9092")).kafka.bootstrap_servers
    'h:9092'
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    records: RecordSettings = Field(default_factory=RecordSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
