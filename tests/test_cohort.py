"""Cohort runs: gathering, failures recorded, resume after kill -9, the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from instasal.errors import OutputExistsError
from instasal.pipeline import ExplainSettings
from instasal.pipeline.cohort import run_cohort, subject_seed

SHAPE = (16, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SETTINGS = ExplainSettings(n_samples=2, n_true_negatives=1, context="full", gradcam=False)


class Linear(nn.Module):
    """Lesion logit 1.5·FLAIR − 0.5·T1w − 2 (a 1×1×1 convolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 0] = 1.5
            self.conv.weight[1, 1] = -0.5
            self.conv.bias[1] = -2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)


def _subject(root: Path, participant: str, rng: np.random.Generator, broken: bool = False) -> None:
    flair = rng.normal(10, 0.2, SHAPE).astype(np.float32)
    t1w = rng.normal(10, 0.2, SHAPE).astype(np.float32)
    corner = rng.integers(2, 10, size=3)
    flair[tuple(slice(c, c + 3) for c in corner)] = 40.0
    mask = (flair > 30).astype(np.uint8)
    if broken:
        t1w[0, 0, 0] = np.nan
    anat = root / participant / "anat"
    _save(anat / f"{participant}_FLAIR.nii.gz", flair)
    _save(anat / f"{participant}_T1w.nii.gz", t1w)
    derivatives = root / "derivatives" / "manual" / participant / "anat"
    _save(derivatives / f"{participant}_desc-lesion_mask.nii.gz", mask)


@pytest.fixture
def dataset(tmp_path: Path, rng: np.random.Generator) -> Path:
    root = tmp_path / "dataset"
    for participant in ("sub-01", "sub-02"):
        _subject(root, participant, rng)
    _subject(root, "sub-03", rng, broken=True)
    return root


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "linear.pt"
    torch.jit.save(torch.jit.script(Linear()), str(path))
    card = {"threshold": 0.5, "patch_size": list(SHAPE), "channel_names": ["FLAIR", "T1w"]}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_subject_seeds_depend_on_subject_not_order():
    assert subject_seed(0, "sub-01") == subject_seed(0, "sub-01")
    assert subject_seed(0, "sub-01") != subject_seed(0, "sub-02")
    assert subject_seed(0, "sub-01") != subject_seed(1, "sub-01")


def test_cohort_gathers_tables_and_records_failures(tmp_path, dataset, model_path):
    out = tmp_path / "cohort"
    result = run_cohort(dataset, str(model_path), out, settings=SETTINGS)
    assert result.done == ["sub-01", "sub-02"]
    assert list(result.failed) == ["sub-03"]
    assert "sub-03_T1w.nii.gz: contains 1 NaN/Inf voxels" in result.failed["sub-03"]
    table = pd.read_csv(out / "lesions.tsv", sep="\t")
    assert set(table["subject"]) == {"sub-01", "sub-02"}
    for participant in ("sub-01", "sub-02"):
        own = pd.read_csv(out / participant / f"{participant}_lesions.tsv", sep="\t")
        assert len(table[table["subject"] == participant]) == len(own)
    failures = json.loads((out / "failures.json").read_text())
    assert failures["n_failed"] == 1
    again = run_cohort(dataset, str(model_path), out, settings=SETTINGS)
    assert again.skipped == ["sub-01", "sub-02"]
    pd.testing.assert_frame_equal(again.table, result.table)


def test_cohort_with_other_settings_is_refused(tmp_path, dataset, model_path):
    out = tmp_path / "cohort"
    run_cohort(dataset, str(model_path), out, settings=SETTINGS, subjects=["sub-01"])
    other = ExplainSettings(n_samples=3, context="full", gradcam=False)
    with pytest.raises(OutputExistsError, match="other data, model or settings"):
        run_cohort(dataset, str(model_path), out, settings=other, subjects=["sub-01"])


def test_cohort_resumes_after_kill_9(tmp_path, dataset, model_path):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "instasal.cli",
        "cohort",
        str(dataset),
        "--out",
        str(out),
        "--model",
        str(model_path),
        "--n-samples",
        "2",
        "--n-true-negatives",
        "1",
        "--context",
        "full",
        "--no-gradcam",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_status = out / "status" / "sub-01.json"
    deadline = time.monotonic() + 300
    while not first_status.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first_status.exists()
    settings = ExplainSettings(n_samples=2, n_true_negatives=1, context="full", gradcam=False)
    resumed = run_cohort(dataset, str(model_path), out, settings=settings)
    assert "sub-01" in resumed.skipped
    clean = run_cohort(dataset, str(model_path), tmp_path / "clean", settings=settings)
    pd.testing.assert_frame_equal(resumed.table, clean.table)


def test_ray_executor_matches_local(tmp_path, dataset, model_path):
    pytest.importorskip("ray")
    local = run_cohort(
        dataset,
        str(model_path),
        tmp_path / "local",
        settings=SETTINGS,
        subjects=["sub-01", "sub-02"],
    )
    distributed = run_cohort(
        dataset,
        str(model_path),
        tmp_path / "ray",
        settings=SETTINGS,
        executor="ray",
        subjects=["sub-01", "sub-02"],
    )
    assert distributed.done == ["sub-01", "sub-02"]
    pd.testing.assert_frame_equal(distributed.table, local.table)
