"""TN pools: grey matter by its rule on hand-made volumes, TN domains of a gm cohort inside the
pool, and the TN sensitivity analysis against scipy on the hand-split groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import load_nifti, row_of
from instasal.analyses.tn_sensitivity import tn_sensitivity
from instasal.errors import ConfigurationError
from instasal.pipeline import ExplainSettings
from instasal.pipeline.cohort import run_cohort
from instasal.pipeline.tn_pools import grey_matter_pool
from instasal.saliency import SmoothGradConfig


def test_grey_matter_is_brain_outside_white_matter_at_least_as_bright_as_it() -> None:
    flair = np.array([[[1.0, 2.0, 3.0, 0.5, 2.5, 9.0]]])
    brain = np.array([[[True, True, True, True, True, False]]])
    white = np.array([[[True, True, True, False, False, False]]])
    # white matter median 2.0: 0.5 (dark, CSF-like) is out, 2.5 in, 9.0 outside the brain
    expected = np.array([[[False, False, False, False, True, False]]])
    np.testing.assert_array_equal(grey_matter_pool(flair, brain, white), expected)
    assert not grey_matter_pool(flair, brain, np.zeros_like(white)).any()


def test_a_gm_cohort_draws_its_tn_domains_in_the_grey_matter_pool(
    tmp_path, linear_dataset, linear_model_path
):
    anat = linear_dataset / "sub-01" / "anat"
    derivatives = linear_dataset / "derivatives" / "manual" / "sub-01" / "anat"
    flair_image = load_nifti(anat / "sub-01_FLAIR.nii.gz")
    brain = np.asarray(load_nifti(derivatives / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    white = np.zeros_like(brain)
    white[2:8] = brain[2:8]
    nib.save(
        nib.Nifti1Image(white.astype(np.uint8), flair_image.affine),
        derivatives / "sub-01_desc-wm_mask.nii.gz",
    )
    flair = np.asarray(flair_image.dataobj)
    pool = brain & ~white & (flair >= np.median(flair[white]))
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None, n_true_negatives=3, context="full"
    )
    out = tmp_path / "gm"
    run_cohort(
        linear_dataset,
        str(linear_model_path),
        out,
        settings=settings,
        subjects=["sub-01"],
        tn_from="gm",
    )
    assert json.loads((out / "cohort.json").read_text())["tn_from"] == "gm"
    lookup = pd.read_csv(out / "sub-01" / "sub-01_desc-instances_dseg.tsv", sep="\t")
    labels = np.asarray(load_nifti(out / "sub-01" / "sub-01_desc-instances_dseg.nii.gz").dataobj)
    tn_ids = lookup.loc[lookup["type"] == "TN", "index"].tolist()
    assert len(tn_ids) == 3
    for tn_id in tn_ids:
        assert pool[labels == tn_id].all()
    unknown: Any = "csf"  # not a TnPool: refused at run time too
    with pytest.raises(ConfigurationError, match="tn_from must be one of"):
        run_cohort(linear_dataset, str(linear_model_path), out, settings=settings, tn_from=unknown)


def _cohort(values: dict[str, list[float]], tn: list[float]) -> pd.DataFrame:
    rows = [
        (f"s{i % 3}", kind, value)
        for kind, kind_values in values.items()
        for i, value in enumerate(kind_values)
    ]
    rows += [(f"s{i % 3}", "TN", value) for i, value in enumerate(tn)]
    return pd.DataFrame(rows, columns=["subject", "type", "peak_FLAIR"])


def test_tn_sensitivity_compares_each_pool_like_scipy_on_the_split_groups() -> None:
    detected = {"TP": [5.0, 6.0, 7.0, 8.0], "FP": [2.0, 3.0, 4.0], "FN": [1.0, 1.5, 2.5]}
    pools = {"wm": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "gm": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
    base = _cohort(detected, pools["wm"])
    tables = {name: _cohort({}, tn) for name, tn in pools.items()}
    found = tn_sensitivity(base, tables).set_index(["pool", "comparison"])
    for name, tn in pools.items():
        for kind, values in detected.items():
            row = row_of(found, (name, f"{kind} − TN"))
            assert row["n_first"] == len(values) and row["n_tn"] == len(tn)
            assert row["median_tn"] == pytest.approx(np.median(tn))
            raw = stats.mannwhitneyu(values, tn, alternative="two-sided").pvalue
            assert raw <= row["p_holm"] <= 1.0  # Holm never lowers a p-value
            assert row["estimate"] == pytest.approx(np.median(values) - np.median(tn))
    # every TP is above every white-matter TN: rank-biserial 1; grey-matter TN overlap TP
    assert found.loc[("wm", "TP − TN"), "rank_biserial"] == pytest.approx(1.0)
    assert row_of(found, ("gm", "TP − TN"))["rank_biserial"] < 1.0
    assert found.loc[("wm", "TP − TN"), "median_order"] == "TP > FP > FN > TN"


def test_cli_passes_trust_tn_from_and_tn_pools_on(tmp_path, linear_dataset, monkeypatch):
    import instasal.analyses
    import instasal.pipeline.cohort
    from instasal.cli import run_app

    seen: dict[str, object] = {}

    def record_cohort(*args, settings=None, tn_from="wm", **kwargs):
        seen["trust"], seen["tn_from"] = settings.trust, tn_from
        raise ConfigurationError("stopped after the arguments")

    def record_analyse(*args, tn_pools=None, **kwargs):
        seen["tn_pools"] = tn_pools
        raise ConfigurationError("stopped after the arguments")

    monkeypatch.setattr(instasal.pipeline.cohort, "run_cohort", record_cohort)
    monkeypatch.setattr(instasal.analyses, "analyse_cohort", record_analyse)
    out = str(tmp_path / "out")
    dataset = str(linear_dataset)
    assert run_app(["cohort", dataset, "--out", out, "--trust", "--tn-from", "gm"]) == 2
    assert seen == {"trust": True, "tn_from": "gm"}
    assert run_app(["cohort", dataset, "--out", out, "--tn-from", "csf"]) == 2
    assert seen == {"trust": True, "tn_from": "gm"}  # refused before the run
    Path(out).mkdir()
    (Path(out) / "lesions.tsv").write_text("")  # analyse checks that the table exists first
    assert run_app(["analyse", out, "--tn-pool", "gm=runs/gm", "--tn-pool", "brain=b"]) == 2
    assert seen["tn_pools"] == {"gm": Path("runs/gm"), "brain": Path("b")}
    seen.clear()
    assert run_app(["analyse", out, "--tn-pool", "gm"]) == 2  # not POOL=FOLDER: refused
    assert "tn_pools" not in seen
