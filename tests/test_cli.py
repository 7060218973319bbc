"""The `rollcast` command's help, version, exit codes and demo output: no broker or Prefect API."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import pandas as pd
import pytest

import pipeline
from flows import cli
from flows.cli import build_parser, main
from flows.demo import DemoOptions, observations, summarize, summary_dict
from pipeline import config

HEAVY = ("torch", "mlflow", "prefect", "pandas", "deltalake")


def command_parsers(parser: argparse.ArgumentParser) -> list[cli.CommandParser]:
    """Every parser under ``parser``, itself included: commands and their actions."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += command_parsers(sub)
    return found  # type: ignore[return-value]


def test_help_and_the_parser_import_no_heavy_library() -> None:
    code = (
        "import json, sys\n"
        "from flows.cli import build_parser\n"
        "build_parser().format_help()\n"
        f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_help_is_plain_text_and_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == pipeline.EXIT_OK

    out = capsys.readouterr().out
    assert out.startswith("usage: rollcast")
    assert "``" not in out and ":class:" not in out
    for code in (0, 1, 2, 64, 75):
        assert f"\n  {code} " in out


def test_version_is_the_installed_package_s(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == pipeline.EXIT_OK

    assert capsys.readouterr().out.strip() == f"rollcast {metadata.version('rollcast')}"


def test_every_option_and_command_has_help() -> None:
    missing = [
        f"{parser.prog} {action.dest}"
        for parser in command_parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]

    assert missing == []


def test_each_command_s_help_lists_every_variable_it_reads() -> None:
    commands = [parser for parser in command_parsers(build_parser()) if parser.reads]

    assert {parser.prog.removeprefix("rollcast ") for parser in commands} >= {
        "demo", "ingest", "train", "tune", "serve", "store info", "backtest", "register",
    }  # fmt: skip
    for parser in commands:
        text = parser.format_help()
        for name in parser.reads:
            for field in getattr(config, name).model_fields:
                assert f"ROLLCAST_{field.upper()}" in text, (parser.prog, field)


def test_train_help_reads_the_training_settings() -> None:
    (train,) = [p for p in command_parsers(build_parser()) if p.prog == "rollcast train"]

    text = train.format_help()
    assert "ROLLCAST_MAX_STEPS" in text and "ROLLCAST_LOOKBACK" in text
    assert "ROLLCAST_BOOTSTRAP_SERVERS" not in text  # training reads no stream


@pytest.mark.parametrize(
    "argv",
    [[], ["nonsense"], ["train", "--max-steps", "many"], ["train", "--as-of", "-1"], ["store"]],
)
def test_a_wrong_command_line_exits_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == pipeline.EXIT_USAGE == 64

    assert "error:" in capsys.readouterr().err


def test_a_wrong_setting_exits_2_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROLLCAST_TOPIC_PARTITIONS", "abc")

    assert main(["ingest"]) == pipeline.EXIT_OPERATOR == 2

    err = capsys.readouterr().err
    assert err.startswith("rollcast: ROLLCAST_TOPIC_PARTITIONS") and "abc" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_an_unreachable_broker_exits_75(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    monkeypatch.setenv("ROLLCAST_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")  # nothing listens

    assert main(["synth", "--records", "10"]) == pipeline.EXIT_OUTAGE == 75

    assert capsys.readouterr().err.startswith(
        f"rollcast: no Kafka broker answers at 127.0.0.1:{port}"
    )


def test_an_unreachable_prefect_api_is_an_outage() -> None:
    # What Prefect raises when PREFECT_API_URL names a server that is down.
    try:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as refused:
            raise RuntimeError("Failed to reach API at http://127.0.0.1:9/api/") from refused
    except RuntimeError as err:
        known = cli.known_error(err)

    assert isinstance(known, pipeline.OutageError)
    assert cli.exit_code(known) == pipeline.EXIT_OUTAGE
    assert "PREFECT_API_URL" in str(known)


def test_a_missing_broker_address_is_the_operator_s_to_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ROLLCAST_BOOTSTRAP_SERVERS", raising=False)

    assert main(["synth", "--records", "10"]) == pipeline.EXIT_OPERATOR

    assert "ROLLCAST_BOOTSTRAP_SERVERS" in capsys.readouterr().err


def test_a_bug_exits_1_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_store_info", broken)

    assert main(["store", "info"]) == pipeline.EXIT_BUG == 1

    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_the_demo_replays_the_whole_file_unless_told_otherwise(tmp_path: Path) -> None:
    csv = tmp_path / "load.csv"
    hours = pd.date_range("2024-01-01", periods=17_520, freq="h")
    pd.DataFrame({"date": hours, "load": range(len(hours))}).to_csv(csv, index=False)

    whole = observations(DemoOptions(data=csv))
    cut = observations(DemoOptions(data=csv, records=1000))

    assert len(whole.frame) == 17_520 and whole.source == "load.csv: all 17520 rows"
    assert len(cut.frame) == 1000 and cut.source == "load.csv: first 1000 of 17520 rows"


def test_the_demo_summary_gives_dead_letters_by_reason() -> None:
    ingested = {"rows_written": 17_498, "dead_letters": {"missing_value": 22}}
    trained = {
        "model_name": "m", "version": "1", "promoted": True, "run_id": "r", "val_mse": 0.5,
        "val_seasonal_naive_mse": 1.0, "val_repeat_last_mse": 2.0, "experiment_id": "7",
    }  # fmt: skip
    served = {"forecasts_out": 10, "series_forecast": 1, "model_version": "1"}
    mlflow_settings = config.MlflowSettings(mlflow_tracking_uri="sqlite:///m.db")

    summary = summarize(
        "f.csv: all 17520 rows", (17_520, ingested, trained, served), mlflow_settings, 1.0
    )

    lines = summary.lines()
    assert "data              f.csv: all 17520 rows" in lines
    assert "dead letters      22 (missing_value 22)" in lines
    assert summary_dict(summary)["dead_letters_by_reason"] == {"missing_value": 22}
    assert "/#/experiments/7/runs?workflowType=machine_learning" in summary.mlflow_page
