"""Every setting is range-checked at start: a hostile ``ROLLCAST_*`` value either fails with a
ConfigurationError naming its variable and what it accepts, or is accepted with a documented
meaning. Each field of each settings class is tried, one at a time."""

from __future__ import annotations

import math
import os
import types
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from pipeline import ConfigurationError
from pipeline.config import (
    ENV_PREFIX,
    DriftSettings,
    IngestSettings,
    KafkaSettings,
    MlflowSettings,
    ModelSettings,
    RecordSettings,
    ScheduleSettings,
    ServeSettings,
    Settings,
    StackSettings,
    StoreSettings,
    TrainSettings,
    field_constraints,
    range_text,
)
from pipeline.windows import freq_to_ms

CLASSES: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    StoreSettings,
    MlflowSettings,
    ModelSettings,
    TrainSettings,
    ScheduleSettings,
    DriftSettings,
    StackSettings,
    IngestSettings,
    ServeSettings,
    RecordSettings,
)
FIELDS = [(cls, name) for cls in CLASSES for name in cls.model_fields]
HOSTILE = (
    "-1",
    "-50",
    "0",
    "0.0",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e300",
    "-1e300",
    "99999999999999999999",
    "\u0661\u0662\u0663",  # Arabic-Indic digits 123
    "\uff11\uff12",  # fullwidth 12
    "",
    " ",
    "garbage",
    " 12 ",
    "1_000",
    "0x10",
    "{}",
)
# Accepted hostile numbers and what they mean.
ZERO_MEANS = {
    "interval_group_fields": "0: every series adapts its intervals in one group",
    "batch_ms": "0: each forecast is published as soon as it is due",
    "metrics_port": "0 turns the Prometheus endpoint off",
    "interval_gain": "0: serve publishes the calibrated intervals, never adapted",
    "online_report_s": "0: serve never reports its online error",
    "tune_trials": "0: no search before training",
    "rewind_records": "0: a gained partition is not re-read",
    "grace_steps": "0: no step waits for late records",
    "max_ahead_s": "0: no record may lie ahead of the stream's time",
    "weight_decay": "0: no decay",
    "dropout": "0: no dropout",
    "data_version": "0: the table's first version",
    "seed": "0 is a seed like any other (the default)",
    "store_retention_hours": "0: compaction keeps no file older versions need",
}
# Accepted spellings of a number (pydantic's): the number they spell, nothing else.
NUMBER_SPELLINGS = {
    " 12 ": "spaces around a number are ignored",
    "1_000": "underscores group digits, as in Python",
    "0.0": "an integer field takes a float with no fraction",
}
# Text fields take any string; what each means, and where a wrong one is caught.
FREE_TEXT = {
    "bootstrap_servers": "'' is unset: the stages stop and say how to start a broker",
    "store_uri": "a path or URI, opened (or refused) when the store opens",
    "mlflow_tracking_uri": "MLflow's URI, checked by MLflow when tracking starts",
    "sasl_plain_username": "passed to the broker, which decides",
    "sasl_plain_password": "a secret passed to the broker, never shown",
    "ssl_cafile": "a file kafka-python opens at connect",
    "ssl_certfile": "a file kafka-python opens at connect",
    "ssl_keyfile": "a file kafka-python opens at connect",
    "postgres_url": "a secret URL, refused by the server if wrong",
}
# Categories a name never holds: control, format, unassigned, private; line breaks.
UNPRINTABLE = {"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp"}
PATHS = {
    "data_dir": "a folder, created where used",
    "tuned_config": "a file, read capped and schema-checked (InvalidFileError)",
}


@pytest.fixture(autouse=True)
def no_rollcast_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)


def variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


def base_type(annotation: Any) -> Any:
    """The field's type without ``Annotated`` and ``| None``."""
    if get_origin(annotation) is Annotated:
        return base_type(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        members = [m for m in get_args(annotation) if m is not type(None)]
        return base_type(members[0]) if len(members) == 1 else annotation
    return annotation


def bounds_of(cls: type[BaseSettings], name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for constraint in field_constraints(cls.model_fields[name]):
        for key in ("ge", "gt", "le", "lt"):
            if getattr(constraint, key, None) is not None:
                found[key] = getattr(constraint, key)
    return found


def within(value: float, bounds: dict[str, float]) -> bool:
    return (
        math.isfinite(value)
        and value >= bounds.get("ge", -math.inf)
        and value > bounds.get("gt", -math.inf)
        and value <= bounds.get("le", math.inf)
        and value < bounds.get("lt", math.inf)
    )


def check_refusal(cls: type[BaseSettings], name: str, err: ConfigurationError) -> None:
    """The message names the variable, and a numeric field's accepted range."""
    message = str(err)
    assert variable(name) in message, message
    if base_type(cls.model_fields[name].annotation) in (int, float):
        assert range_text(cls.model_fields[name]) in message, message


def check_accepted(cls: type[BaseSettings], name: str, raw: str, value: Any) -> None:
    """An accepted hostile value is in the field's range, or has a meaning written above."""
    kind = base_type(cls.model_fields[name].annotation)
    if get_origin(kind) in (Union, types.UnionType):  # a number or a word: 3 or "auto"
        kinds = [base_type(member) for member in get_args(kind)]
        kind = type(value) if type(value) in kinds else kinds[-1]
    if kind in (int, float):
        assert within(value, bounds_of(cls, name)), (name, raw, value)
        assert value != 0 or name in ZERO_MEANS, (name, raw)
        assert float(raw.strip().replace("_", "")) == value, (name, raw)  # NUMBER_SPELLINGS
    elif kind is bool:
        assert isinstance(value, bool)  # pydantic's words: 0/1, true/false, yes/no, on/off
    elif get_origin(kind) is Literal:
        assert value in get_args(kind)
    elif kind is Path:
        assert name in PATHS and value == Path(raw)
    elif name == "freq":
        assert freq_to_ms(value) > 0
    elif name == "store_options":
        assert isinstance(value, dict)
    else:
        check_text(cls, name, raw, value)


def check_text(cls: type[BaseSettings], name: str, raw: str, value: Any) -> None:
    """Text is taken as typed; a name is never blank nor padded; a cron is Prefect's."""
    shown = value.get_secret_value() if isinstance(value, SecretStr) else value
    assert shown == raw
    if name == "train_cron":
        assert len(raw.split()) >= 5
    elif name not in FREE_TEXT:  # a name (group, topic, device...): its service checks the rest
        assert raw and raw.strip() == raw, (name, raw)
        assert not {unicodedata.category(c) for c in raw} & UNPRINTABLE, (name, raw)


def try_setting(cls: type[BaseSettings], name: str, raw: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable(name), raw)
        try:
            built = cls()
        except ConfigurationError as err:
            check_refusal(cls, name, err)
            return
    check_accepted(cls, name, raw, getattr(built, name))


@pytest.mark.parametrize(("cls", "name"), FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_every_field_refuses_or_means_each_hostile_value(
    cls: type[BaseSettings], name: str
) -> None:
    for raw in HOSTILE:
        try_setting(cls, name, raw)


hostile_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), raw=st.one_of(hostile_text, numbers))
def test_generated_values_are_refused_by_name_or_accepted_in_range(
    field: tuple[type[BaseSettings], str], raw: str
) -> None:
    try_setting(*field, raw)


def test_every_numeric_setting_has_a_lower_and_an_upper_bound() -> None:
    numeric = [
        (cls, name)
        for cls, name in FIELDS
        if base_type(cls.model_fields[name].annotation) in (int, float)
    ]
    unbounded = [
        f"{cls.__name__}.{name}"
        for cls, name in numeric
        if not (
            {"ge", "gt"} & set(bounds_of(cls, name)) and {"le", "lt"} & set(bounds_of(cls, name))
        )
    ]
    assert len(numeric) > 50
    assert unbounded == []


@pytest.mark.parametrize(
    ("cls", "name", "raw", "expected"),
    [
        (ServeSettings, "rewind_records", "-50", "between 0 and 10000000"),
        (StoreSettings, "freq", "0h", "not a positive step"),
        (IngestSettings, "ingest_idle_s", "nan", "finite"),
        (IngestSettings, "ingest_idle_s", "-1", "more than 0"),
        (ServeSettings, "champion_poll_s", "0", "between 0.1 and 86400"),
        (ServeSettings, "champion_poll_s", "nan", "finite"),
        (ServeSettings, "max_poll_records", "0", "between 1 and 1000000"),
        (ServeSettings, "metrics_port", "70000", "between 0 and 65535 (0: off)"),
        (KafkaSettings, "topic_partitions", "0", "between 1 and 10000"),
        (KafkaSettings, "topic_partitions", "-3", "between 1 and 10000"),
        (KafkaSettings, "fetch_max_wait_ms", "0", "between 1 and 30000"),
        (StoreSettings, "max_gap", "0", "between 1 and 10000"),
        (ModelSettings, "season", "0", "between 1 and 100000"),
        (StackSettings, "stack_mlflow_port", "0", "between 1 and 65535"),
        (StackSettings, "stack_prefect_port", "-1", "between 1 and 65535"),
        (TrainSettings, "learning_rate", "inf", "finite"),
        (TrainSettings, "grad_clip", "inf", "finite"),
        (TrainSettings, "weight_decay", "inf", "finite"),
        (RecordSettings, "grace_steps", "1000000000", "between 0 and 10000"),
        (RecordSettings, "max_ahead_s", "1e300", "between 0 and 31622400"),
        (ScheduleSettings, "train_cron", "not a cron", "not a cron Prefect accepts"),
        (ServeSettings, "max_series", "9" * 20, "between 1 and 100000000"),
        (ServeSettings, "max_new_series", "9" * 20, "between 1 and 100000000"),
        (IngestSettings, "ingest_max_series", "9" * 20, "between 1 and 100000000"),
        (ModelSettings, "hidden_size", "1000000", "between 1 and 4096"),
        (ModelSettings, "hidden_size", "\u0661\u0662\u0663", "an integer (ASCII digits)"),
        (ModelSettings, "lookback", "\uff11\uff12", "an integer (ASCII digits)"),
        (RecordSettings, "max_record_bytes", str(2**30), "between 1 and 67108864"),
        (RecordSettings, "max_abs_value", "1e39", "at most 3.40282e+38"),
        (TrainSettings, "seed", str(2**32), "between 0 and 4294967295"),
    ],
)
def test_a_known_harmful_value_is_refused_by_name_and_range(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], name: str, raw: str, expected: str
) -> None:
    monkeypatch.setenv(variable(name), raw)

    with pytest.raises(ConfigurationError) as refused:
        cls()

    assert str(refused.value).startswith(f"{variable(name)}={raw}: ")
    assert expected in str(refused.value)


def test_the_bundle_refuses_a_bad_part_with_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_METRICS_PORT", "70000")

    with pytest.raises(ConfigurationError, match="ROLLCAST_METRICS_PORT=70000"):
        Settings()


def test_every_refused_setting_gets_its_own_line_and_a_secret_stays_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_STACK_MLFLOW_PORT", "0")
    monkeypatch.setenv("ROLLCAST_POSTGRES_URL", "")

    with pytest.raises(ConfigurationError) as refused:
        StackSettings()

    lines = str(refused.value).split("; ")
    assert sorted(line.split(":")[0] for line in lines) == [
        "ROLLCAST_POSTGRES_URL",
        "ROLLCAST_STACK_MLFLOW_PORT=0",
    ]


def test_a_store_options_value_that_is_not_json_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ROLLCAST_STORE_OPTIONS", "garbage")

    with pytest.raises(ConfigurationError, match="ROLLCAST_STORE_OPTIONS: must be a JSON object"):
        StoreSettings()


def test_the_defaults_pass_their_own_checks() -> None:
    for cls in CLASSES:
        cls()


def test_a_value_passed_in_rather_than_read_says_how_it_was_given() -> None:
    with pytest.raises(ConfigurationError) as refused:
        ServeSettings(serve_idle_s=0.0)

    assert str(refused.value) == (
        "ROLLCAST_SERVE_IDLE_S (given as serve_idle_s=0.0): must be more than 0 and at most 2592000"
    )


@pytest.mark.parametrize(
    "entrypoint", ["ingest", "train", "serve", "maintenance", "retrain", "tune"]
)
def test_each_flows_settings_give_a_parameter_schema_prefect_accepts(entrypoint: str) -> None:
    """A deployment sends its flow's parameter schema (these settings) to the Prefect API, which
    checks it with Python's regex engine: a pattern it cannot compile refuses the deployment."""
    import importlib

    from prefect import Flow
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
    from prefect.utilities.callables import parameter_schema

    module = importlib.import_module(f"flows.{entrypoint}")
    flows = [value for value in vars(module).values() if isinstance(value, Flow)]
    assert flows, f"flows/{entrypoint}.py defines no flow"
    for flow in flows:
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        validate_values_conform_to_schema({}, schema, ignore_required=True)
