"""Typed, frozen settings: one class per component, every field an environment variable.

Each field ``foo`` is read from ``ROLLCAST_FOO``. Settings are read once, at an entry point
(the CLI, a flow), and passed down; no other module reads the environment.

>>> KafkaSettings(bootstrap_servers="localhost:9092").topic_forecasts
'forecasts'
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.contract import DEFAULT_MAX_GAP
from pipeline.model import ForecasterConfig
from pipeline.records import DEFAULT_MAX_RECORD_BYTES, FLOAT32_MAX, RecordPolicy
from pipeline.train import TrainConfig
from pipeline.windows import freq_to_ms

ENV_PREFIX = "ROLLCAST_"


def _settings_config() -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", protected_namespaces=()
    )


class KafkaSettings(BaseSettings):
    """Where the stream lives. Security fields are passed through to the Kafka clients."""

    model_config = _settings_config()

    bootstrap_servers: str | None = None
    topic_observations: str = "observations"
    topic_forecasts: str = "forecasts"
    topic_deadletter: str = "deadletter"
    topic_partitions: int = 3
    client_id: str = "rollcast"
    # How long the broker may hold a fetch that has no data yet: a bound on added latency.
    fetch_max_wait_ms: int = 10
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
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


class StoreSettings(BaseSettings):
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

    # Gaps of up to this many steps are interpolated; longer ones split the series.
    max_gap: int = DEFAULT_MAX_GAP

    @field_validator("freq")
    @classmethod
    def _fixed_step(cls, freq: str | None) -> str | None:
        """A step of fixed length ("30min", "1h", "1D"); months and the like are refused."""
        if freq is not None:
            try:
                freq_to_ms(freq)
            except ValueError as err:
                raise ValueError(f"{freq!r} is not a fixed-length pandas frequency") from err
        return freq

    @property
    def table_uri(self) -> str:
        """Where the series table is."""
        return self.store_uri or str(self.data_dir / "series")

    @property
    def legacy_store_dir(self) -> Path:
        """Where the one-Parquet-file-per-series store of earlier versions was."""
        return self.data_dir / "store"


class MlflowSettings(BaseSettings):
    """Tracking and registry."""

    model_config = _settings_config()

    mlflow_tracking_uri: str = "sqlite:///.rollcast/mlflow.db"
    mlflow_experiment: str = "rollcast"
    model_name: str = "rollcast-forecaster"
    champion_alias: str = "champion"


# The forecaster's shape and training defaults are defined once, on the dataclasses the core
# uses; the settings below only read them.
SHAPE = ForecasterConfig(channels=())
TRAINING = TrainConfig()


class ModelSettings(BaseSettings):
    """Shape of the forecaster trained by the train flow (defaults: :class:`ForecasterConfig`)."""

    model_config = _settings_config()

    # The longest lookback tried; the train flow shortens it to what the data can train with.
    lookback: Annotated[int, Field(ge=1)] = SHAPE.lookback
    horizon: Annotated[int, Field(ge=1)] = SHAPE.horizon
    architecture: Literal["lstm", "dlinear"] = "lstm"
    cell: Literal["lstm", "gru"] = SHAPE.cell  # type: ignore[assignment]
    hidden_size: Annotated[int, Field(ge=1)] = SHAPE.hidden_size
    num_layers: Annotated[int, Field(ge=1)] = SHAPE.num_layers
    dropout: Annotated[float, Field(ge=0, lt=1)] = SHAPE.dropout
    bidirectional: bool = SHAPE.bidirectional
    norm: Literal["last", "mean", "none"] = SHAPE.norm  # type: ignore[assignment]
    channel_independent: bool = SHAPE.channel_independent
    # Steps per input and output segment; lookback is cut to a multiple of it.
    segment_len: Annotated[int, Field(ge=1)] = SHAPE.segment_len
    decoder: Literal["pmf", "linear"] = SHAPE.decoder  # type: ignore[assignment]
    # The output head and its training loss (pipeline.model.HEADS).
    loss: Literal["mse", "l1"] = SHAPE.loss  # type: ignore[assignment]
    # Period of the seasonal-naive baseline, in steps. None: a day of steps at the store's
    # frequency (24 for hourly data, 48 half-hourly), a week for daily data.
    season: int | None = None


class TrainSettings(BaseSettings):
    """Optimisation settings of the train flow (defaults: :class:`TrainConfig`)."""

    model_config = _settings_config()

    max_steps: Annotated[int, Field(ge=1)] = TRAINING.max_steps
    time_limit_s: Annotated[float, Field(gt=0)] | None = TRAINING.time_limit_s
    eval_every: Annotated[int, Field(ge=1)] | None = TRAINING.eval_every
    patience: Annotated[int, Field(ge=1)] = TRAINING.patience
    batch_size: Annotated[int, Field(ge=1)] = TRAINING.batch_size
    learning_rate: Annotated[float, Field(gt=0)] = TRAINING.learning_rate
    weight_decay: Annotated[float, Field(ge=0)] = TRAINING.weight_decay
    grad_clip: Annotated[float, Field(gt=0)] = TRAINING.grad_clip
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = TRAINING.seed
    device: str = TRAINING.device
    schedule: Literal["constant", "cosine", "halving"] = TRAINING.schedule  # type: ignore[assignment]
    # A challenger must beat seasonal-naive on the validation windows to become champion.
    promotion_gate: bool = True
    # A JSON file of tuned settings (written by `rollcast tune`) that override the ones above.
    tuned_config: Path | None = None
    # Start the challenger from the champion's weights when its config is the same, with a
    # budget of warm_start_steps instead of max_steps (same early stopping, same gate).
    warm_start: bool = False
    warm_start_steps: Annotated[int, Field(ge=1)] = 250
    # Optuna trials the train flow runs before training (0: none; see `rollcast tune`).
    tune_trials: Annotated[int, Field(ge=0)] = 0
    tune_timeout_s: Annotated[float, Field(gt=0)] | None = None
    # One trial's limit: a candidate still training after it is stopped as "capped" (the
    # first trial, the defaults, runs to the end). None: no limit.
    tune_trial_timeout_s: Annotated[float, Field(gt=0)] | None = None
    # Memory for the rows training reads: a larger table is sampled (its newest rows), and
    # the run says so. About 48 bytes per stored row, regularized.
    train_memory_mb: Annotated[int, Field(ge=16, le=16 * 1024 * 1024)] = 4096
    # Windows one epoch draws from: more are sampled evenly (bounds the index, 8 B a window).
    max_windows: Annotated[int, Field(ge=1, le=1_000_000_000)] = 2_000_000
    # Train on this version of the series table (Delta time travel); None: the newest.
    data_version: Annotated[int, Field(ge=0)] | None = None


class ScheduleSettings(BaseSettings):
    """When the deployed flows run by themselves (``python -m flows.deployments``)."""

    model_config = _settings_config()

    # New observations land in the store within this long.
    ingest_interval_s: Annotated[float, Field(gt=0)] = 300.0
    # Retrain nightly, after a day of fresh data (cron, the Prefect server's time zone: UTC).
    train_cron: str = "0 3 * * *"
    # How often the drift flow compares serve's online error with the champion's validation.
    drift_check_interval_s: Annotated[float, Field(gt=0)] = 900.0


class DriftSettings(BaseSettings):
    """When serve's online error of the champion starts a retraining (flows/retrain.py)."""

    model_config = _settings_config()

    # Retrain when the online MSE exceeds the validation MSE by this factor...
    drift_ratio: Annotated[float, Field(gt=0)] = 2.0
    # ...measured over at least this many forecast values (steps ahead x channels x forecasts).
    drift_min_scored: Annotated[int, Field(ge=1)] = 1000


class StackSettings(BaseSettings):
    """`rollcast stack`: MLflow and Prefect on PostgreSQL, as docker-compose.yml runs them."""

    model_config = _settings_config()

    # A connection allowed to create databases; the servers get one database each on it.
    postgres_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    stack_mlflow_db: str = "mlflow"
    stack_prefect_db: str = "prefect"
    stack_host: str = "127.0.0.1"  # loopback: neither server authenticates (deploy/README.md)
    stack_mlflow_port: int = 5000
    stack_prefect_port: int = 4200


class IngestSettings(BaseSettings):
    """The ingest stage's consumer."""

    model_config = _settings_config()

    ingest_group: str = "rollcast-ingest"
    # The ingest flow ends after this long without a new record.
    ingest_idle_s: float = 5.0
    # A flush (one table commit) holds at most this many records, and waits at most this long
    # after its first: fewer, larger files and commits, at the cost of that much latency.
    ingest_flush_records: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000
    ingest_flush_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Series whose state (channels, newest steps) ingest holds in memory: about 0.5 KB each.
    ingest_max_series: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000


class ServeSettings(BaseSettings):
    """The serve stage's consumer and loop."""

    model_config = _settings_config()

    serve_group: str = "rollcast-serve"
    serve_idle_s: float | None = None  # None: run until stopped
    # How often serve logs its online MSE to the serving version's MLflow run (0: never).
    online_report_s: Annotated[float, Field(ge=0)] = 60.0
    # A member with no partitions this long after it starts says so in its log, and its idle
    # time (serve_idle_s) counts from then on.
    join_grace_s: Annotated[float, Field(gt=0)] = 30.0
    # Records per poll: one batch. Also the bound on records forecast twice after a crash.
    max_poll_records: int = 2000
    # Live series held; the least recently seen is dropped beyond this.
    max_series: Annotated[int, Field(ge=1)] = 100_000
    # Records re-read per gained partition to rebuild windows after a restart or rebalance.
    rewind_records: int = 50_000
    # How often the registry alias is checked for a new champion.
    champion_poll_s: float = 30.0
    # Prometheus endpoint port; 0 turns it off.
    metrics_port: int = 9108
    # The endpoint's address: loopback unless told otherwise (0.0.0.0 in a container).
    metrics_host: str = "127.0.0.1"
    # Established series are never evicted by new keys: these are held apart, least recently
    # seen dropped first, until their window fills (a key flood churns only this pool).
    max_new_series: Annotated[int, Field(ge=1)] = 10_000


class RecordSettings(BaseSettings):
    """What a record must be to be accepted, the same in ingest, serve and training.

    See :class:`pipeline.records.RecordPolicy`.
    """

    model_config = _settings_config()

    max_record_bytes: Annotated[int, Field(ge=1)] = DEFAULT_MAX_RECORD_BYTES
    # A magnitude limit on every value; the default only asks for finite float32.
    max_abs_value: Annotated[float, Field(gt=0)] = FLOAT32_MAX
    # How far past the stream's time (when a record was produced) its timestamp may lie.
    max_ahead_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 24 * 3600.0
    # Steps of event time a step waits for out-of-order records; older ones are `late`.
    grace_steps: Annotated[int, Field(ge=0)] = 0

    def policy(self) -> RecordPolicy:
        return RecordPolicy(
            max_record_bytes=self.max_record_bytes,
            max_abs_value=self.max_abs_value,
            max_ahead_ms=round(self.max_ahead_s * 1000),
            grace_steps=self.grace_steps,
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
