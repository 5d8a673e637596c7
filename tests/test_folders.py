"""Output-folder locks, temporaries of killed runs and corrupt state files (instasal.folders)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from instasal.errors import (
    ConfigurationError,
    InstasalWarning,
    OutputLockedError,
    StateFileError,
    describe_os_error,
)
from instasal.folders import (
    LOCK_NAME,
    hold_lock,
    host_tag,
    output_folder_lock,
    read_state_file,
    remove_orphaned_temporaries,
)
from instasal.io import atomic_save, atomic_write_text

HOLDER = """
import sys, time
from instasal.folders import output_folder_lock
with output_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _dead_pid() -> int:
    """The id of a process that has ended and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_run_is_refused_naming_pid_host_and_start(tmp_path):
    folder = tmp_path / "out"
    with (
        output_folder_lock(folder),
        pytest.raises(OutputLockedError) as refused,
        output_folder_lock(folder),
    ):
        pass
    message = str(refused.value)
    assert f"pid {os.getpid()} on {socket.gethostname()} since 20" in message
    assert message.startswith(f"{folder}: in use by another run") and "\n" not in message
    assert not (folder / LOCK_NAME).exists()  # released when the first run ended


def test_live_holder_is_refused_and_a_killed_one_taken_over_with_a_note(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(OutputLockedError, match=f"pid {holder.pid} on "),
            output_folder_lock(folder),
        ):
            pass
    finally:
        holder.kill()  # kill -9: the lock file stays, its flock goes with the process
        holder.wait()
    assert (folder / LOCK_NAME).exists()
    with (
        pytest.warns(InstasalWarning, match=f"took over the lock .*pid {holder.pid} on "),
        output_folder_lock(folder),
    ):
        details = json.loads((folder / LOCK_NAME).read_text())
    assert details["pid"] == os.getpid()


def test_waiting_lock_is_taken_when_the_holder_ends(tmp_path):
    folder = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    killer = subprocess.Popen(
        [sys.executable, "-c", f"import os, time; time.sleep(1); os.kill({holder.pid}, 9)"]
    )
    started = time.monotonic()
    with pytest.warns(InstasalWarning, match="took over"), output_folder_lock(folder, wait=True):
        waited = time.monotonic() - started
    killer.wait()
    holder.wait()
    assert waited > 0.5  # it waited for the kill, a second after it began


def test_file_system_without_locks_goes_on_with_a_note(tmp_path, monkeypatch):
    def refuse(handle: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with (
        pytest.warns(InstasalWarning, match="does not support locks"),
        output_folder_lock(tmp_path / "out") as folder,
    ):
        atomic_write_text(folder / "a.txt", "kept")
    assert (tmp_path / "out" / "a.txt").read_text() == "kept"


def test_output_path_that_is_a_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("mine")
    with (
        pytest.raises(ConfigurationError, match=r"results.txt: is a file, not a folder"),
        output_folder_lock(path),
    ):
        pass
    assert path.read_text() == "mine"


def test_a_folder_created_for_a_refused_run_is_removed(tmp_path):
    with pytest.raises(ValueError, match="bad input"), output_folder_lock(tmp_path / "new"):
        raise ValueError("bad input")
    assert not (tmp_path / "new").exists()


def test_temporaries_name_host_and_process(tmp_path):
    names: list[str] = []
    atomic_save(tmp_path / "map.nii.gz", lambda temporary: names.append(temporary.name))
    expected = (
        rf"^\.map\.nii\.gz\.{re.escape(host_tag())}-{os.getpid()}\.[a-z0-9_]{{8}}\.tmp\.nii\.gz$"
    )
    assert re.match(expected, names[0])


def test_temporaries_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    lesions = tmp_path / "out" / "lesions"
    lesions.mkdir(parents=True)
    host = host_tag()
    dead = _dead_pid()
    orphan = lesions / f".sub_lesion-001_summary.json.{host}-{dead}.abcd1234.tmp.json"
    live = tmp_path / "out" / f".run.json.{host}-{os.getpid()}.abcd1234.tmp.json"
    elsewhere = tmp_path / "out" / f".run.json.other-machine-{dead}.abcd1234.tmp.json"
    user_file = tmp_path / "out" / ".notes.tmp"
    for path in (orphan, live, elsewhere, user_file):
        path.write_bytes(b"x" * 100)
    with (
        pytest.warns(InstasalWarning, match="removed 1 temporary file"),
        output_folder_lock(tmp_path / "out"),
    ):
        pass
    assert not orphan.exists()
    assert live.exists() and elsewhere.exists() and user_file.exists()
    assert remove_orphaned_temporaries(tmp_path / "out") == []


CORRUPTIONS = {
    "truncated": b'{"run_key": "ab',
    "empty": b"",
    "list": b'["run_key"]',
    "latin-1": '{"label": "sujet-é"}'.encode("latin-1"),
}
PROBLEMS = {
    "truncated": "truncated or not JSON",
    "empty": "empty",
    "list": "a JSON list, expected an object",
    "latin-1": "not UTF-8 text",
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_state_file_is_one_line_naming_file_and_recovery(tmp_path, kind):
    path = tmp_path / "run.json"
    path.write_bytes(CORRUPTIONS[kind])
    with pytest.raises(StateFileError) as refused:
        read_state_file(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: corrupt state file") and "\n" not in message
    assert PROBLEMS[kind] in message and message.endswith(
        "pass --overwrite to replace that run's results"
    )


def test_a_held_lock_names_what_it_protects(tmp_path):
    lock = tmp_path / "sub-01.lock"
    with (
        hold_lock(lock, what="cohort: subject sub-01"),
        pytest.raises(OutputLockedError, match=r"^cohort: subject sub-01: in use"),
        hold_lock(lock, what="cohort: subject sub-01"),
    ):
        pass
    assert not lock.exists()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOSPC, "no space left on the device; every file written so far is complete"),
        (errno.EROFS, "read-only file system; choose a writable output folder"),
        (errno.EACCES, "permission denied"),
        (errno.ELOOP, f"Too many levels (OS error {errno.ELOOP})"),
    ],
)
def test_os_errors_are_described_with_the_path(code, expected):
    error = OSError(code, "Too many levels" if code == errno.ELOOP else os.strerror(code), "/x/y")
    message = describe_os_error(error)
    assert message.startswith("/x/y: ") and expected in message
    if code == errno.ENOSPC:
        assert "run the same command again to resume" in message
