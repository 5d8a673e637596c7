"""Cohort runs: gathering, failures recorded, refusals, resume after kill -9, the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import load_nifti
from instasal.errors import ConfigurationError, OutputExistsError
from instasal.pipeline import ExplainSettings
from instasal.pipeline.cohort import run_cohort, subject_seed
from instasal.saliency import SmoothGradConfig

SETTINGS = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, n_true_negatives=1, context="full"
)


def test_subject_seeds_depend_on_subject_not_order():
    assert subject_seed(0, "sub-01") == subject_seed(0, "sub-01")
    assert subject_seed(0, "sub-01") != subject_seed(0, "sub-02")
    assert subject_seed(0, "sub-01") != subject_seed(1, "sub-01")


def test_cohort_gathers_tables_and_records_failures(tmp_path, linear_dataset, linear_model_path):
    out = tmp_path / "cohort"
    stages: list[str] = []
    result = run_cohort(
        linear_dataset,
        str(linear_model_path),
        out,
        settings=SETTINGS,
        progress=lambda stage, done, total: stages.append(stage),
    )
    # each subject's own stages show, not only "subjects 0/3" while one is explained
    assert "segmenting (sub-01)" in stages
    assert any(s.startswith("saliency of lesion(s)") and s.endswith("(sub-02)") for s in stages)
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
    again = run_cohort(linear_dataset, str(linear_model_path), out, settings=SETTINGS)
    assert again.skipped == ["sub-01", "sub-02"]
    pd.testing.assert_frame_equal(again.table, result.table)


def test_cohort_with_other_settings_is_refused(tmp_path, linear_dataset, linear_model_path):
    out = tmp_path / "cohort"
    run_cohort(linear_dataset, str(linear_model_path), out, settings=SETTINGS, subjects=["sub-01"])
    other = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=3), gradcam=None, context="full")
    with pytest.raises(OutputExistsError, match="other data, model or settings"):
        run_cohort(linear_dataset, str(linear_model_path), out, settings=other, subjects=["sub-01"])


def test_an_unknown_executor_is_refused_before_the_folder_is_written(
    tmp_path, linear_dataset, linear_model_path
):
    out = tmp_path / "cohort"
    unknown: Any = "dask"  # not an Executor: refused at run time too
    with pytest.raises(ConfigurationError, match=r"executor must be one of .*got 'dask'"):
        run_cohort(linear_dataset, str(linear_model_path), out, settings=SETTINGS, executor=unknown)
    assert not out.exists()  # no cohort.json naming an executor that never ran


def test_cohort_resumes_after_kill_9(tmp_path, linear_dataset, linear_model_path):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "instasal.cli",
        "cohort",
        str(linear_dataset),
        "--out",
        str(out),
        "--model",
        str(linear_model_path),
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
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, n_true_negatives=1, context="full"
    )
    resumed = run_cohort(linear_dataset, str(linear_model_path), out, settings=settings)
    assert "sub-01" in resumed.skipped
    clean = run_cohort(
        linear_dataset, str(linear_model_path), tmp_path / "clean", settings=settings
    )
    pd.testing.assert_frame_equal(resumed.table, clean.table)


def test_ray_executor_matches_local(tmp_path, linear_dataset, linear_model_path):
    pytest.importorskip("ray")
    local = run_cohort(
        linear_dataset,
        str(linear_model_path),
        tmp_path / "local",
        settings=SETTINGS,
        subjects=["sub-01", "sub-02"],
    )
    distributed = run_cohort(
        linear_dataset,
        str(linear_model_path),
        tmp_path / "ray",
        settings=SETTINGS,
        executor="ray",
        subjects=["sub-01", "sub-02"],
    )
    assert distributed.done == ["sub-01", "sub-02"]
    pd.testing.assert_frame_equal(distributed.table, local.table)


def test_cohort_trust_gathers_the_checks_and_analyse_summarises_them(
    tmp_path, linear_dataset, linear_model_path
):
    from instasal.analyses import analyse_cohort

    out = tmp_path / "trusted"
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2),
        gradcam=None,
        n_true_negatives=0,  # the checks cost about 1,600 forward passes per domain
        context="full",
        trust=True,
    )
    subjects = ["sub-01", "sub-02"]
    run_cohort(
        linear_dataset,
        str(linear_model_path),
        out,
        settings=settings,
        subjects=subjects,
        with_mean=True,
    )
    for name in ("profiles", "trust_randomisation", "trust_curves"):
        gathered = pd.read_csv(out / f"{name}.tsv", sep="\t")
        for participant in subjects:
            own = pd.read_csv(out / participant / f"{participant}_{name}.tsv", sep="\t")
            assert len(gathered[gathered["subject"] == participant]) == len(own) > 0
        assert not list((out / "sub-01" / "mean").glob(f"*_{name}.tsv"))  # max runs only
    report = analyse_cohort(out)
    trust = json.loads((out / "analysis" / "statistics.json").read_text())["trust"]
    table = pd.read_csv(out / "lesions.tsv", sep="\t")
    tp = table[table["type"] == "TP"]
    found = trust["randomisation"]["smoothgrad"]
    assert found["n_lesions"] == len(tp)
    assert found["share_passing"] == pytest.approx(tp["randomisation_passes_smoothgrad"].mean())
    gain = trust["faithfulness"]["deletion_gain_smoothgrad_logit"]
    assert gain["estimate"] == pytest.approx(tp["deletion_gain_smoothgrad_logit"].mean(), rel=1e-12)
    assert gain["n_subjects"] == 2
    assert trust["ablation"]["n_lesions"] == len(tp)
    # a 1×1×1 linear model's map is 0 outside Ω: no ring below 0, and 2 subjects cannot test it
    neighbourhood = trust["negative_neighbourhood"]
    assert neighbourhood["verdict"] == "not testable at this n"
    for ring in neighbourhood["rings"]:
        assert abs(ring["trained"]["estimate"]) <= 1e-6 and ring["p"] == 1.0
    rows = pd.read_csv(out / "analysis" / "trust.tsv", sep="\t")
    checks = {"randomisation", "faithfulness", "modality reliance", "negative neighbourhood"}
    assert set(rows["check"]) == checks
    assert "Can the maps be trusted?" in report.html
    for name in ("trust_randomisation", "trust_deletion_insertion", "trust_profiles"):
        assert (out / "analysis" / "figures" / f"{name}.png").stat().st_size > 0


def test_with_mean_segments_each_subject_once(
    tmp_path, linear_dataset, linear_model_path, monkeypatch
):
    """The mean pass explains the max pass's domains of one prediction: one per subject."""
    import instasal.pipeline.explain as explain

    calls: list[int] = []
    predict = explain.predict_prepared

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return predict(*args, **kwargs)

    monkeypatch.setattr(explain, "predict_prepared", counted)
    out = tmp_path / "cohort"
    subjects = ["sub-01", "sub-02"]
    result = run_cohort(
        linear_dataset,
        str(linear_model_path),
        out,
        settings=SETTINGS,
        subjects=subjects,
        with_mean=True,
        progress=None,
    )
    assert result.done == subjects
    assert len(calls) == len(subjects)
    maxima = pd.read_csv(out / "lesions.tsv", sep="\t")
    means = pd.read_csv(out / "lesions_mean.tsv", sep="\t")
    domain = ["subject", "id", "type", "volume_mm3", "prob_mean", "prob_max"]
    pd.testing.assert_frame_equal(means[domain], maxima[domain])
    assert len(maxima) > len(subjects)  # lesions and TN domains of both subjects
    for participant in subjects:
        for name in ("desc-lesion_probseg", "desc-instances_dseg"):
            own = out / participant / f"{participant}_{name}.nii.gz"
            mean = out / participant / "mean" / f"{participant}_{name}.nii.gz"
            own_data = np.asarray(load_nifti(own).dataobj)
            assert np.array_equal(own_data, np.asarray(load_nifti(mean).dataobj))
