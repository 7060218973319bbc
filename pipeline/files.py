"""Reading the files an operator passes in (a tuned config, a checkpoint, the local champion
copy), and naming a full disk.

Every read goes through :func:`open_regular`: the path must be a regular file (not a directory,
a FIFO or a device such as ``/dev/zero``) no larger than a cap, so a wrong path fails at once
with one line instead of blocking or reading until memory runs out. What is wrong is raised as
:class:`~pipeline.InvalidFileError`, its message one line that starts with the path.

:func:`disk_full_cause` tells a full disk (or a file-size or quota limit) from other I/O
errors, whether Python or a Rust library (delta-rs: ``... (os error 28)``) raised it.

Standard library only: the core's checkpoint loading uses it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pipeline import InvalidFileError, ResourceError

# A JSON file an operator writes or `rollcast tune` writes is a few KB; a MiB is room to spare.
MAX_JSON_BYTES = 1 << 20
# The largest checkpoint Rollcast reads: far above any shape the settings allow on one GPU
# (hidden 4096, 8 layers of LSTM is ~1.1 GB of float32 weights), far below a machine's memory.
MAX_CHECKPOINT_BYTES = 2 << 30
# errno -> what the operator reads: the causes a retry cannot cure until space is freed.
DISK_FULL = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit)",
}
# How delta-rs (Rust's std::io::Error) writes an errno into its message.
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def one_line(text: object) -> str:
    """``text`` on one line (a library's multi-line message folded), for an error message.

    >>> one_line("bad\\n  file")
    'bad file'
    """
    return " ".join(str(text).split())


def open_regular(
    path: Path, max_bytes: int, what: str, error: type[InvalidFileError] = InvalidFileError
) -> IO[bytes]:
    """``path`` opened for binary reading once it is known to be a regular file of at most
    ``max_bytes``; ``error`` (an :class:`InvalidFileError`) otherwise. Never blocks (a FIFO is
    refused before anything is read from it). ``what`` names the file in the message.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise error(f"{path}: cannot open the {what}: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: the {what} is not a regular file")
        if info.st_size > max_bytes:
            size = info.st_size
            raise error(f"{path}: the {what} is {size} bytes, over the limit of {max_bytes}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`).

    Reads at most ``max_bytes + 1`` bytes, so a file that grows while it is read is refused too.
    """
    with open_regular(path, max_bytes, what) as file:
        try:
            data = file.read(max_bytes + 1)
        except OSError as err:
            raise InvalidFileError(f"{path}: cannot read the {what}: {err.strerror}") from err
    if len(data) > max_bytes:
        raise InvalidFileError(f"{path}: the {what} is over the limit of {max_bytes} bytes")
    return data


def read_json_object(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The JSON object in ``path``: UTF-8, at most ``max_bytes``, an object at the top.

    Raises :class:`InvalidFileError` (one line naming the path) for anything else, deep
    nesting included.
    """
    data = read_capped(path, max_bytes, what)
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise InvalidFileError(f"{path}: the {what} is not UTF-8 text ({err.reason})") from err
    except RecursionError as err:
        raise InvalidFileError(f"{path}: the {what} is nested too deeply to be read") from err
    except ValueError as err:
        raise InvalidFileError(f"{path}: the {what} is not JSON: {one_line(err)}") from err
    if not isinstance(parsed, dict):
        kind = type(parsed).__name__
        raise InvalidFileError(f"{path}: the {what} must be a JSON object, not a {kind}")
    return parsed


def disk_full_cause(err: BaseException) -> str | None:
    """What filled up ("no space left on device", ...) if ``err``, or an error it was raised
    from, is a full disk, a quota or a file-size limit; None for any other error.

    >>> disk_full_cause(OSError(errno.ENOSPC, "No space left on device"))
    'no space left on device'
    >>> disk_full_cause(Exception("Unable to copy data to file: File too large (os error 27)"))
    'file too large (a file-size limit)'
    >>> disk_full_cause(ValueError("no")) is None
    True
    """
    seen: set[int] = set()
    error: BaseException | None = err
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return DISK_FULL[error.errno]
        found = RUST_OS_ERROR.search(str(error))
        if found and int(found.group(1)) in DISK_FULL:
            return DISK_FULL[int(found.group(1))]
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def disk_full_is_resource_error(where: str) -> Iterator[None]:
    """Inside the block, a full disk (see :func:`disk_full_cause`) is raised as
    :class:`~pipeline.ResourceError`: one line naming the file (else ``where``) and the cause,
    which no retry can cure. Other errors pass through unchanged."""
    try:
        yield
    except ResourceError:
        raise
    except Exception as err:
        cause = disk_full_cause(err)
        if cause is None:
            raise
        path = getattr(err, "filename", None) or where
        raise ResourceError(f"{path}: {cause} ({one_line(err)})") from err
