"""Output folders shared by runs: locks, the temporaries of killed runs, and state files.

One run writes an output folder at a time. Its lock is a file, ``.instasal.lock``, holding the
owner's pid, host, start time and command, and an exclusive ``flock`` on that file which the owner
keeps for the whole run. We chose ``flock`` over ``O_CREAT|O_EXCL``: the kernel releases an
``flock`` when its process ends, however it ends (``kill -9`` included), so a lock left by a dead
run is never mistaken for a live one and taking it over is atomic, whereas an ``O_EXCL`` file
must be judged stale from a pid — impossible for a run on another machine sharing the file system,
and racy when two runs take over the same stale file. The file's contents only name the holder in
messages. Linux supports ``flock`` on local file systems and on NFS (as a whole-file lock);
where a file system refuses locks, runs go on with a note that concurrent runs are not detected.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from instasal.errors import (
    ConfigurationError,
    InstasalWarning,
    OutputLockedError,
    StateFileError,
)
from instasal.typing import PathLike

__all__ = [
    "LOCK_NAME",
    "check_output_folder",
    "hold_lock",
    "host_tag",
    "model_files",
    "output_folder_lock",
    "plain_file_name",
    "process_alive",
    "read_state_file",
    "refuse_writing_over_inputs",
    "remove_orphaned_temporaries",
    "temporary_prefix",
]

LOCK_NAME = ".instasal.lock"
_UNSUPPORTED_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


def host_tag() -> str:
    """This machine's name as temporary file names carry it (letters, digits and ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def temporary_prefix(path: Path) -> str:
    """The start of the name of a temporary written for ``path``: ``.<name>.<host>-<pid>.``."""
    return f".{path.name}.{host_tag()}-{os.getpid()}."


# temporary_prefix, then mkstemp's 8 random characters of [a-z0-9_], then .tmp and the suffixes
_TEMPORARY = re.compile(
    r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(\..*)?$"
)


def remove_orphaned_temporaries(folder: PathLike, *, recursive: bool = True) -> list[Path]:
    """Remove the temporaries of atomic writes whose process died (``kill -9``) in ``folder``.

    Only temporaries named by this machine whose process no longer exists are removed; those of a
    live run, and those of runs on other machines sharing the file system, are kept.

    Returns
    -------
    list of Path
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    host = host_tag()
    removed = []
    for path in sorted(found):
        match = _TEMPORARY.match(path.name)
        if match is None or match["host"] != host or not path.is_file():
            continue
        if process_alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def read_state_file(
    path: PathLike, *, recovery: str = "pass --overwrite to replace that run's results"
) -> dict[str, Any]:
    """Read the JSON object an earlier run left to describe its state (``run.json``, …).

    Parameters
    ----------
    path
        The state file.
    recovery
        What recovers from a corrupt file, as the message ends.

    Raises
    ------
    StateFileError
        When the file is empty, truncated, not JSON, not UTF-8 or not a JSON object; the message
        names the file, the problem and ``recovery``.
    """
    path = Path(path)
    payload = path.read_bytes()
    try:
        record = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except json.JSONDecodeError as error:
        problem = "empty" if not payload.strip() else f"truncated or not JSON: {error.msg}"
    else:
        if isinstance(record, dict):
            return record
        problem = f"a JSON {type(record).__name__}, expected an object"
    raise StateFileError(f"{path}: corrupt state file of an earlier run ({problem}); {recovery}")


def _describe(details: bytes) -> str | None:
    """A lock file's contents as messages show them: pid, host, start time and command."""
    try:
        record = json.loads(details.decode("utf-8"))
        return (
            f"pid {record['pid']} on {record['host']} since {record['since']}: {record['command']}"
        )
    except (ValueError, KeyError, TypeError):
        return None


def _holder(path: Path) -> str:
    """Who holds the lock ``path``, as it wrote it."""
    for _ in range(20):  # the holder writes its details just after taking the lock
        try:
            described = _describe(path.read_bytes())
        except OSError:
            described = None
        if described is not None:
            return described
        time.sleep(0.05)
    return "its details are unreadable"


def _lock_details() -> bytes:
    details = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv)[:300],
    }
    return json.dumps(details).encode("utf-8")


def _open_locked(path: Path, what: str, wait: bool) -> int | None:
    """An open descriptor of ``path`` holding its ``flock``; None where locks are unsupported."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(handle)
            raise OutputLockedError(
                f"{what}: in use by another run ({_holder(path)}); "
                "wait for it to finish or stop it, then run again"
            ) from None
        except OSError as error:
            os.close(handle)
            if error.errno not in _UNSUPPORTED_LOCKS:
                raise
            warnings.warn(
                f"{path}: this file system does not support locks; a concurrent run into the "
                "same folder would not be detected",
                InstasalWarning,
                stacklevel=4,
            )
            return None
        try:
            same = os.fstat(handle).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        os.close(handle)  # the holder removed the file between our open and lock: try again


@contextmanager
def hold_lock(path: PathLike, *, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the lock file ``path`` for the ``with`` block (its folder must exist).

    Parameters
    ----------
    path
        The lock file; created, and removed when the block ends.
    what
        What the lock protects, as messages name it (a folder, a cohort subject).
    wait
        Wait for a live holder to finish instead of refusing.

    Raises
    ------
    OutputLockedError
        When another live process holds the lock (and ``wait`` is false); the message names its
        pid, host, start time and command.
    """
    path = Path(path)
    handle = _open_locked(path, what, wait)
    if handle is None:
        yield
        return
    try:
        left = os.read(handle, 4096)
        if left.strip():
            warnings.warn(
                f"{what}: took over the lock of a run that ended without releasing it "
                f"({_describe(left) or 'its details are unreadable'})",
                InstasalWarning,
                stacklevel=3,
            )
        os.ftruncate(handle, 0)
        os.pwrite(handle, _lock_details(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(handle)


def check_output_folder(folder: PathLike) -> None:
    """Refuse, in one line, an empty output folder path or one that is an existing file.

    An empty string would silently mean the working folder (``Path("")`` is ``.``).

    Raises
    ------
    ConfigurationError
        When ``folder`` is empty, or exists and is not a folder.
    """
    if os.fspath(folder) == "":
        raise ConfigurationError(
            "the output folder (--out) is an empty path; give a folder (. for the working folder)"
        )
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(
            f"{folder}: is a file, not a folder; give the output (--out) a folder path"
        )


@contextmanager
def output_folder_lock(folder: PathLike, *, wait: bool = False) -> Iterator[Path]:
    """Hold ``folder`` (created) for one run, and remove the temporaries of killed runs in it.

    A folder this call created and nothing was written to is removed again when the block ends,
    so a run refused on bad input leaves nothing behind.

    Raises
    ------
    ConfigurationError
        When ``folder`` is empty or an existing file.
    OutputLockedError
        When another live run holds ``folder`` (see :func:`hold_lock`).
    """
    check_output_folder(folder)
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with hold_lock(folder / LOCK_NAME, what=str(folder), wait=wait):
            removed = remove_orphaned_temporaries(folder)
            if removed:
                warnings.warn(
                    f"{folder}: removed {len(removed)} temporary file(s) left by killed runs",
                    InstasalWarning,
                    stacklevel=3,
                )
            yield folder
    finally:
        if created and not any(folder.iterdir()):
            with suppress(OSError):  # another run has just started writing there
                folder.rmdir()


def plain_file_name(name: str, *, what: str) -> str:
    """``name`` when it is a plain file name: not empty, not ``.`` or ``..``, no folder part.

    A name with a folder in it (``../../x``, ``/tmp/x``) would place a run's files outside its
    output folder and outside that folder's lock.

    Raises
    ------
    ConfigurationError
        Naming ``what`` (the option, e.g. ``--name``) and the value.

    >>> plain_file_name("sub-01", what="--name")
    'sub-01'
    """
    separators = {os.sep, os.altsep or os.sep, "\0"}
    if name in {"", ".", ".."} or any(separator in name for separator in separators):
        raise ConfigurationError(
            f"{what} must be a plain file name, without a folder, got {name!r}"
        )
    return name


def model_files(model: object) -> list[Path]:
    """The files a model given by path is read from; none for a loaded module or a built-in name.

    A file and the card beside it (``<stem>.json``), every file under a model folder (MONAI bundle,
    nnU-Net results folder), or the weights of ``module:factory=weights.pt``.
    """
    if not isinstance(model, str | os.PathLike):
        return []
    spec = os.fspath(model)
    factory, separator, weights = spec.partition("=")
    path = Path(weights if separator and ":" in factory else spec)
    if path.is_dir():
        return [found for found in path.rglob("*") if found.is_file()]
    return [found for found in (path, path.with_suffix(".json")) if found.is_file()]


def refuse_writing_over_inputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike]) -> None:
    """Refuse a run that would write, replace or remove one of its own inputs.

    Files are compared as the file system sees them (device and inode), so an output that is an
    input under another name (a symbolic link, a hard link, ``./`` or ``../`` in the path) is
    found too. Checked before anything is written, with or without ``overwrite``.

    Raises
    ------
    ConfigurationError
        Naming the output, the input it is, and what to do.
    """
    given: dict[tuple[int, int], Path] = {}
    for path in inputs:
        with suppress(OSError):
            status = os.stat(path)
            given.setdefault((status.st_dev, status.st_ino), Path(path))
    for output in outputs:
        try:
            status = os.stat(output)
        except OSError:  # not there yet: a new file is no input
            continue
        same = given.get((status.st_dev, status.st_ino))
        if same is not None:
            raise ConfigurationError(
                f"{output}: is an input of this run ({same}); no run writes over its inputs, "
                "with or without --overwrite: choose another output folder (--out)"
            )
