"""No silent loss: locked output folders, corrupt state files, full or read-only disks (issue 13).

The model is the 1×1×1 linear TorchScript network of ``conftest.py`` on its 16³ subjects, so a
run takes about a second and an undisturbed run in a fresh folder is the oracle of every table.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_nifti, write_linear_subject
from instasal.cli import run_app
from instasal.errors import InstasalWarning, StateFileError
from instasal.folders import LOCK_NAME, hold_lock, host_tag, output_folder_lock
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.pipeline.cohort import run_cohort
from instasal.saliency import SmoothGradConfig

SETTINGS = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, n_true_negatives=1, context="full"
)
FLAGS = ["--n-samples", "2", "--n-true-negatives", "1", "--context", "full", "--no-gradcam"]

# waits until the test says go, so that two processes call the command at the same moment
RACER = """
import pathlib, sys, time
import instasal.pipeline.explain, instasal.pipeline.cohort
from instasal.cli import run_app
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(run_app(sys.argv[3:]))
"""


def _images(dataset: Path, participant: str = "sub-01") -> list[str]:
    anat = dataset / participant / "anat"
    return [str(anat / f"{participant}_FLAIR.nii.gz"), str(anat / f"{participant}_T1w.nii.gz")]


def _explain_args(dataset: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", *_images(dataset), "--out", str(out), "--model", str(model), *FLAGS, *extra]


def _race(tmp_path: Path, commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run the CLI commands in separate processes released at the same moment."""
    processes = []
    for index, arguments in enumerate(commands):
        ready, go = tmp_path / f"ready-{index}", tmp_path / "go"
        command = [sys.executable, "-c", RACER, str(ready), str(go), *arguments]
        processes.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    while not all((tmp_path / f"ready-{i}").exists() for i in range(len(commands))):
        assert all(p.poll() is None for p in processes), "a racer ended before the start"
    (tmp_path / "go").touch()
    results = []
    for process, arguments in zip(processes, commands, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(arguments, process.returncode, stdout, stderr))
    return results


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_two_explain_runs_started_together_never_both_succeed(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "out"
    first = _explain_args(linear_dataset, linear_model_path, out, "--seed", "1")
    second = _explain_args(linear_dataset, linear_model_path, out, "--seed", "2")
    results = _race(tmp_path, [first, second])
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 2], [r.stderr for r in results]
    winner = next(r for r in results if r.returncode == 0)
    loser = next(r for r in results if r.returncode != 0)
    assert "Traceback" not in loser.stderr
    (line,) = _error_lines(loser.stderr)
    assert "in use by another run (pid" in line or "other inputs or settings" in line
    provenance = json.loads((out / "provenance.json").read_text())
    winner_seed = int(winner.args[winner.args.index("--seed") + 1])
    assert provenance["settings"]["seed"] == winner_seed
    assert json.loads((out / "run.json").read_text())["complete"] is True


@pytest.mark.parametrize("command", ["explain", "segment", "evaluate", "experiment"])
def test_a_held_folder_is_refused_in_one_line(
    tmp_path, linear_dataset, linear_model_path, capsys, command
):
    out = tmp_path / "out"
    model = ["--model", str(linear_model_path)]
    arguments = {
        "explain": _explain_args(linear_dataset, linear_model_path, out),
        "segment": ["segment", *_images(linear_dataset), "--out", str(out), *model],
        "evaluate": ["evaluate", str(linear_dataset), "--out", str(out), *model],
        "experiment": ["experiment", "context", str(linear_dataset), "--out", str(out), *model],
    }[command]
    with output_folder_lock(out):
        status = run_app(arguments)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written
    assert status == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{out}: in use by another run (pid {os.getpid()} on " in line


@pytest.mark.parametrize(
    "corrupt",
    [b'{"run_key": "0f', b"", b"[1, 2]", b'{"label": "\xe9"}'],
    ids=["truncated", "empty", "list", "latin-1"],
)
def test_corrupt_run_json_is_one_line_and_overwrite_recovers(
    tmp_path, linear_dataset, linear_model_path, capsys, corrupt
):
    out = tmp_path / "out"
    clean = explain_subject(_images(linear_dataset), linear_model_path, out, settings=SETTINGS)
    (out / "run.json").write_bytes(corrupt)
    with pytest.raises(StateFileError, match=r"run\.json: corrupt state file .*--overwrite"):
        explain_subject(_images(linear_dataset), linear_model_path, out, settings=SETTINGS)
    capsys.readouterr()
    assert run_app(_explain_args(linear_dataset, linear_model_path, out)) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{out / 'run.json'}: corrupt state file" in line and "--overwrite" in line
    assert run_app(_explain_args(linear_dataset, linear_model_path, out, "--overwrite")) == 0
    recovered = pd.read_csv(out / "sub-01_lesions.tsv", sep="\t")
    pd.testing.assert_frame_equal(recovered, pd.read_csv(clean.layout.table, sep="\t"))
    assert json.loads((out / "run.json").read_text())["complete"] is True


def test_corrupt_lesion_record_is_noted_and_the_lesion_recomputed(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "out"
    clean = explain_subject(
        _images(linear_dataset), linear_model_path, out, settings=SETTINGS, report=False
    )
    record = clean.layout.lesion_record(1)
    record.write_bytes(b"\xff\xfe")
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(manifest | {"complete": False}))
    with pytest.warns(InstasalWarning, match=r"summary\.json: corrupt state file.*recomputing"):
        resumed = explain_subject(
            _images(linear_dataset), linear_model_path, out, settings=SETTINGS, report=False
        )
    assert resumed.reused_lesions == len(clean.table) - 1
    pd.testing.assert_frame_equal(resumed.table, clean.table)


@pytest.mark.parametrize("command", ["explain", "segment", "cohort", "evaluate"])
def test_out_that_is_a_file_is_one_line_and_the_file_kept(
    tmp_path, linear_dataset, linear_model_path, capsys, command
):
    out = tmp_path / "results.tsv"
    out.write_text("mine")
    model = ["--model", str(linear_model_path)]
    arguments = {
        "explain": _explain_args(linear_dataset, linear_model_path, out),
        "segment": ["segment", *_images(linear_dataset), "--out", str(out), *model],
        "cohort": ["cohort", str(linear_dataset), "--out", str(out), *model, *FLAGS],
        "evaluate": ["evaluate", str(linear_dataset), "--out", str(out), *model],
    }[command]
    assert run_app(arguments) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{out}: is a file, not a folder" in line
    assert out.read_text() == "mine"


def _fail_writes_under(folder: Path, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every file creation under ``folder`` fail as a read-only or forbidden file system."""
    real_open = os.open

    def refusing_open(
        path: str | bytes, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
    ) -> int:
        if Path(os.fsdecode(path)).is_relative_to(folder) and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refusing_open)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["EROFS", "EACCES"])
@pytest.mark.parametrize("command", ["explain", "segment"])
def test_unwritable_out_is_one_line_naming_the_path(
    tmp_path, linear_dataset, linear_model_path, capsys, monkeypatch, code, command
):
    out = tmp_path / "out"
    _fail_writes_under(out, code, monkeypatch)
    arguments = (
        _explain_args(linear_dataset, linear_model_path, out)
        if command == "explain"
        else ["segment", *_images(linear_dataset), "--out", str(out), "-m", str(linear_model_path)]
    )
    assert run_app(arguments) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    expected = "read-only file system" if code == errno.EROFS else "permission denied"
    assert line.startswith(f"error: {out}") and expected in line
    assert not out.exists()  # the folder made for the refused run is removed again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_one_line(tmp_path, linear_dataset, linear_model_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert run_app(_explain_args(linear_dataset, linear_model_path, parent / "out")) == 2
    finally:
        parent.chmod(0o755)
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(parent) in line and "permission denied" in line


def test_disk_full_is_one_line_and_a_rerun_resumes_to_the_clean_table(
    tmp_path, linear_dataset, linear_model_path, capsys, monkeypatch
):
    clean = explain_subject(
        _images(linear_dataset), linear_model_path, tmp_path / "clean", settings=SETTINGS
    )
    out = tmp_path / "out"
    real_fsync = os.fsync
    calls = {"n": 0}

    def filling_fsync(handle: int) -> None:
        calls["n"] += 1
        if calls["n"] > 5:  # after the probability, mask, instances and two lesion files
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(handle)

    monkeypatch.setattr(os, "fsync", filling_fsync)
    assert run_app(_explain_args(linear_dataset, linear_model_path, out)) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {out}{os.sep}")  # names the file it could not write
    assert "no space left on the device" in line
    assert "run the same command again to resume" in line
    probability = out / "sub-01_desc-lesion_probseg.nii.gz"
    kept = probability.stat().st_ino
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in written if ".tmp" in p.name]  # no partial file is left
    for path in written:  # and every file written before the disk filled is whole
        if path.name.endswith(".nii.gz"):
            assert load_nifti(path).get_fdata().size > 0
        elif path.suffix == ".json":
            json.loads(path.read_text())
    assert run_app(_explain_args(linear_dataset, linear_model_path, out)) == 0
    assert probability.stat().st_ino == kept  # the rerun resumed from the stored probability
    resumed = pd.read_csv(out / "sub-01_lesions.tsv", sep="\t")
    pd.testing.assert_frame_equal(resumed, pd.read_csv(clean.layout.table, sep="\t"))
    assert not (out / LOCK_NAME).exists()


COHORT_RACER = """
import json, sys
from instasal.pipeline import ExplainSettings
from instasal.pipeline.cohort import run_cohort
from instasal.saliency import SmoothGradConfig
settings = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, n_true_negatives=1, context="full"
)
result = run_cohort(sys.argv[1], sys.argv[2], sys.argv[3], settings=settings)
print(json.dumps({"done": result.done, "failed": list(result.failed),
                  "skipped": result.skipped, "held": result.held, "pending": result.pending}))
"""


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["subject", "id"]).reset_index(drop=True)


def test_two_cohort_workers_never_explain_one_subject_and_lose_nothing(
    tmp_path, rng, linear_model_path
):
    dataset = tmp_path / "dataset"
    participants = [f"sub-0{k}" for k in range(1, 6)]
    for participant in participants:  # sub-05 fails (a NaN voxel): failures count as written
        write_linear_subject(dataset, participant, rng, broken=participant == "sub-05")
    out = tmp_path / "cohort"
    racer = ["-c", COHORT_RACER, str(dataset), str(linear_model_path), str(out)]
    processes = [
        subprocess.Popen([sys.executable, *racer], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    reports = []
    for process in processes:
        stdout, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        reports.append(json.loads(stdout.splitlines()[-1]))
    explained = [
        (set(r["done"]) | set(r["failed"])) - set(r["skipped"]) - set(r["held"]) for r in reports
    ]
    assert not explained[0] & explained[1]  # no subject explained by both workers
    assert explained[0] | explained[1] == set(participants)  # each by one of them
    for report in reports:  # failed, or still held by the other worker when this one gathered
        assert set(report["failed"]) <= {"sub-05"}
        assert "sub-05" in report["failed"] + report["pending"]
    oracle = run_cohort(dataset, str(linear_model_path), tmp_path / "alone", settings=SETTINGS)
    gathered = pd.read_csv(out / "lesions.tsv", sep="\t")
    pd.testing.assert_frame_equal(_sorted(gathered), _sorted(oracle.table))


def test_cohort_skips_a_subject_a_live_worker_holds_and_gathers_it_later(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "cohort"
    (out / "status").mkdir(parents=True)
    subjects = ["sub-01", "sub-02"]
    with (
        hold_lock(out / "status" / "sub-01.lock", what="another worker"),
        pytest.warns(InstasalWarning, match=r"subject sub-01: in use by another run .*skipped"),
    ):
        first = run_cohort(
            linear_dataset, str(linear_model_path), out, settings=SETTINGS, subjects=subjects
        )
    assert (first.held, first.pending, first.done) == (["sub-01"], ["sub-01"], ["sub-02"])
    assert set(first.table["subject"]) == {"sub-02"}
    second = run_cohort(
        linear_dataset, str(linear_model_path), out, settings=SETTINGS, subjects=subjects
    )
    assert (second.skipped, second.done, second.held) == (["sub-02"], subjects, [])
    assert set(pd.read_csv(out / "lesions.tsv", sep="\t")["subject"]) == set(subjects)


def test_cohort_takes_over_the_subject_of_a_killed_worker(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "cohort"
    (out / "status").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": "vm", "since": "2026-01-01T00:00:00+00:00", "command": "x"}
    (out / "status" / "sub-01.lock").write_text(json.dumps(stale))
    with pytest.warns(InstasalWarning, match=rf"subject sub-01: took over .*pid {dead.pid} "):
        result = run_cohort(
            linear_dataset, str(linear_model_path), out, settings=SETTINGS, subjects=["sub-01"]
        )
    assert result.done == ["sub-01"] and not (out / "status" / "sub-01.lock").exists()


@pytest.mark.parametrize(
    "corrupt",
    [b"", b'{"cohort_key": 1', b'"text"', b"\xff"],
    ids=["empty", "truncated", "string", "not-utf8"],
)
def test_corrupt_cohort_state_is_one_line_and_overwrite_recovers(
    tmp_path, linear_dataset, linear_model_path, capsys, corrupt
):
    out = tmp_path / "cohort"
    arguments = ["cohort", str(linear_dataset), "--out", str(out), "-m", str(linear_model_path)]
    arguments += [*FLAGS, "--subjects", "sub-01"]
    clean = run_cohort(
        linear_dataset, str(linear_model_path), out, settings=SETTINGS, subjects=["sub-01"]
    )
    (out / "status" / "sub-01.json").write_bytes(corrupt)
    with pytest.warns(InstasalWarning, match=r"sub-01\.json: corrupt state file.*again"):
        again = run_cohort(
            linear_dataset, str(linear_model_path), out, settings=SETTINGS, subjects=["sub-01"]
        )
    assert again.done == ["sub-01"] and again.skipped == []
    (out / "cohort.json").write_bytes(corrupt)
    with pytest.raises(StateFileError, match=r"cohort\.json: corrupt state file.*--overwrite"):
        run_cohort(linear_dataset, str(linear_model_path), out, settings=SETTINGS)
    capsys.readouterr()
    assert run_app(arguments) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{out / 'cohort.json'}: corrupt state file" in line and "--overwrite" in line
    assert run_app([*arguments, "--overwrite"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "lesions.tsv", sep="\t"), clean.table)


def test_explain_removes_the_temporaries_of_a_killed_run_only(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "out"
    (out / "lesions").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = host_tag()
    orphan = (
        out / "lesions" / f".sub-01_lesion-001_summary.json.{host}-{dead.pid}.k2j3h4g5.tmp.json"
    )
    live = out / f".sub-01_desc-lesion_probseg.nii.gz.{host}-{os.getpid()}.k2j3h4g5.tmp.nii.gz"
    for path in (orphan, live):
        path.write_bytes(bytes(4096))
    with pytest.warns(InstasalWarning, match="removed 1 temporary file"):
        explain_subject(_images(linear_dataset), linear_model_path, out, settings=SETTINGS)
    assert not orphan.exists() and live.exists()
