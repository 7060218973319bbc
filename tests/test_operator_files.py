"""Files an operator passes in (a tuned config, a checkpoint to register, the local champion
copy) are size-capped and schema-checked: one error line naming the file, exit 2, no retry."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from prefect.states import Failed

from flows.retries import transient_only
from pipeline import ConfigurationError, InvalidFileError, OutageError, ResourceError
from pipeline.config import ModelSettings, Settings, StoreSettings, TrainSettings
from pipeline.files import read_capped, read_json_object
from pipeline.forecast import LoadedForecaster
from pipeline.model import CheckpointError, build_forecaster, load_checkpoint
from pipeline.model import save_checkpoint as write_checkpoint
from pipeline.recipe import ForecasterConfig
from pipeline.swap import LocalCopy
from pipeline.training import TrainingSettings

HOSTILE_JSON = {
    "a list": "[]",
    "model settings as a list": '{"model_settings": []}',
    "200,000 nested brackets": "[" * 200_000 + "]" * 200_000,
    "invalid UTF-8": b'{"model_settings": {"hidden_size": "\xff\xfe"}}',
    "a huge hidden size": '{"model_settings": {"hidden_size": 100000000000000000000}}',
    "an unknown top-level key": '{"model_settings": {}, "surprise": 1}',
    "an unknown setting": '{"model_settings": {"hiden_size": 32}}',
    "a wrong type": '{"train_settings": {"learning_rate": "fast"}}',
    "not JSON": "model_settings = 3",
}


def settings(tmp_path: Path) -> TrainingSettings:
    store = StoreSettings(data_dir=tmp_path)
    return TrainingSettings.of(Settings(store=store, model=ModelSettings(), train=TrainSettings()))


def assert_one_line_naming(err: BaseException, path: Path) -> None:
    message = str(err)
    assert "\n" not in message and str(path) in message, message
    assert len(message) < 2000, message


def refused_tuned(tmp_path: Path, path: Path) -> BaseException:
    """What loading ``path`` as a tuned config raises (it must raise an operator's error)."""
    with pytest.raises((ConfigurationError, ResourceError)) as refused:
        settings(tmp_path).tuned(path)
    assert_one_line_naming(refused.value, path)
    assert not transient_only(None, None, Failed(data=refused.value))
    return refused.value


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_a_hostile_tuned_config_is_one_invalid_file_line(tmp_path: Path, case: str) -> None:
    if case == "a huge hidden size" and _accepts_any_hidden_size():
        pytest.skip("config.ModelSettings has no upper bound on hidden_size to check against")
    path = tmp_path / "tuned.json"
    text = HOSTILE_JSON[case]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())

    assert isinstance(refused_tuned(tmp_path, path), InvalidFileError)


def _accepts_any_hidden_size() -> bool:
    try:
        ModelSettings.model_validate({"hidden_size": 10**20})
    except (ValueError, ConfigurationError):
        return False
    return True


def test_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    refused = refused_tuned(tmp_path, Path("/dev/zero"))

    assert isinstance(refused, InvalidFileError) and "not a regular file" in str(refused)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    refused = refused_tuned(tmp_path, tmp_path)

    assert isinstance(refused, InvalidFileError)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "tuned.fifo"
    os.mkfifo(fifo)  # nobody writes to it: opening it to read would block

    refused = refused_tuned(tmp_path, fifo)

    assert isinstance(refused, InvalidFileError) and "not a regular file" in str(refused)


def test_a_10_mb_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text('{"val_mse": 1.0, "search_run_id": "' + "x" * 10_000_000 + '"}')

    refused = refused_tuned(tmp_path, path)

    assert isinstance(refused, InvalidFileError) and "over the limit" in str(refused)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    assert isinstance(refused_tuned(tmp_path, tmp_path / "nowhere.json"), InvalidFileError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_cuda_device_on_a_machine_without_one_is_a_resource_error(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"train_settings": {"device": "cuda"}}))

    refused = refused_tuned(tmp_path, path)

    assert isinstance(refused, ResourceError) and "GPU" in str(refused)


def test_a_device_torch_does_not_know_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"train_settings": {"device": "abacus"}}))

    assert isinstance(refused_tuned(tmp_path, path), ConfigurationError)


def test_what_rollcast_tune_writes_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    written = {
        "model_settings": {"hidden_size": 32, "lookback": 96},
        "train_settings": {"learning_rate": 0.01},
        "val_mse": 0.5,
        "tuned_on": {"channels": ["load"], "freq": "1h", "horizon": 24},
        "search_run_id": "abc",
    }
    path.write_text(json.dumps(written))

    tuned = settings(tmp_path).tuned(path)

    assert (tuned.model.hidden_size, tuned.train.learning_rate) == (32, 0.01)


def test_the_reads_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    path.write_text('{"a": 1}')

    assert read_json_object(path, "file") == {"a": 1}
    with pytest.raises(InvalidFileError, match="over the limit of 4"):
        read_capped(path, 4, "file")


# -- checkpoints: `rollcast register` and the local champion copy -------------------------


def tiny(version: str = "1") -> LoadedForecaster:
    config = ForecasterConfig(channels=("load",), lookback=8, horizon=2, architecture="dlinear")
    return LoadedForecaster("m", version, build_forecaster(config, seed=0))


def saved(tmp_path: Path) -> Path:
    return write_checkpoint(tiny().model, tmp_path / "forecaster.pt")


def huge_claim(path: Path) -> None:
    """A small file whose config claims a network of 10^10 hidden units."""
    blob = torch.load(path, weights_only=True)
    blob["config"] = {**blob["config"], "architecture": "lstm", "hidden_size": 10**10}
    torch.save(blob, path)


def extra_tensor(path: Path) -> None:
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["smuggled"] = torch.zeros(3)
    torch.save(blob, path)


class Payload:
    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (print, ("unpickled!",))


HOSTILE_CHECKPOINTS: dict[str, Callable[[Path], None]] = {
    "torn": lambda path: path.write_bytes(path.read_bytes()[:100]),
    "not a checkpoint": lambda path: path.write_text("hello"),
    "a tensor, not a dict": lambda path: torch.save(torch.zeros(2), path),
    "no state dict": lambda path: torch.save({"config": {}}, path),
    "a pickled callable": lambda path: path.write_bytes(pickle.dumps({"config": Payload()})),
    "unknown config keys": lambda path: torch.save(
        {"config": {"channels": ["a"], "wings": 2}, "state_dict": {}}, path
    ),
    "a huge claimed shape": huge_claim,
    "an extra tensor": extra_tensor,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CHECKPOINTS))
def test_a_hostile_checkpoint_is_one_checkpoint_error_line(tmp_path: Path, case: str) -> None:
    path = saved(tmp_path)
    HOSTILE_CHECKPOINTS[case](path)

    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)

    assert isinstance(refused.value, InvalidFileError)
    assert_one_line_naming(refused.value, path)


@pytest.mark.parametrize("path", [Path("/dev/zero"), Path("/")], ids=["dev-zero", "directory"])
def test_a_checkpoint_must_be_a_regular_file(path: Path) -> None:
    with pytest.raises(InvalidFileError, match="not a regular file"):
        load_checkpoint(path)


def test_a_checkpoint_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = saved(tmp_path)

    with pytest.raises(InvalidFileError, match="over the limit"):
        load_checkpoint(path, max_bytes=100)
    assert load_checkpoint(path).config == tiny().model.config


def test_register_refuses_a_hostile_checkpoint_with_exit_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import main

    monkeypatch.setenv("ROLLCAST_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = tmp_path / "forecaster.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")

    code = main(["register", str(path)])

    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(errors) == 1 and str(path) in errors[0]
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow is touched


def test_a_corrupt_local_copy_is_ignored_with_one_warning_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = LocalCopy(tmp_path, "m")
    copy.save(tiny("7"))
    (tmp_path / "m.pt").write_bytes(b"torn")

    assert copy.load() is None

    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][-1]
    assert "\n" not in warning and str(tmp_path / "m.pt") in warning


@pytest.mark.parametrize(
    "meta",
    ["[]", '{"name": "m"}', "[" * 200_000, '{"name": "m", "version": "1", "sha256": "x"}'],
    ids=["list", "missing keys", "nested", "bad digest"],
)
def test_a_hostile_local_copy_version_file_is_ignored(
    tmp_path: Path, meta: str, caplog: pytest.LogCaptureFixture
) -> None:
    copy = LocalCopy(tmp_path, "m")
    copy.save(tiny("7"))
    (tmp_path / "m.json").write_text(meta)

    assert copy.load() is None

    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][-1]
    assert "\n" not in warning and str(tmp_path / "m.json") in warning


def test_a_good_local_copy_still_loads(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path, "m")
    copy.save(tiny("7"))

    kept = copy.load()

    assert kept is not None and (kept.name, kept.version) == ("m", "7")


# -- what the flows retry ----------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        InvalidFileError("f: bad"),
        ConfigurationError("bad"),
        ResourceError("no GPU"),
        CheckpointError("torn"),
        RuntimeError("CUDA error: no kernel image"),
        MemoryError(),
        OSError(28, "No space left on device"),
        ValueError("a bug"),
    ],
    ids=lambda err: type(err).__name__,
)
def test_the_flows_retry_no_error_that_will_recur(error: BaseException) -> None:
    assert not transient_only(None, None, Failed(data=error))


@pytest.mark.parametrize(
    "error",
    [OutageError("registry down"), ConnectionRefusedError(), TimeoutError()],
    ids=lambda err: type(err).__name__,
)
def test_the_flows_retry_outages(error: BaseException) -> None:
    assert transient_only(None, None, Failed(data=error))


def test_an_outage_behind_a_library_error_is_retried() -> None:
    import requests

    try:
        try:
            raise requests.ConnectionError("refused")
        except requests.ConnectionError:
            raise RuntimeError("API request failed")  # noqa: B904 (as MLflow raises it)
    except RuntimeError as wrapped:
        assert transient_only(None, None, Failed(data=wrapped))
