"""explain_subject end to end on a hand-analysable model: table values, resume, overwrite, errors.

The model is a 1×1×1 convolution: lesion logit ``w_FLAIR·x_FLAIR + w_T1w·x_T1w + b`` and background
logit 0. Its Jacobian row for output voxel v is ``w_k`` at input voxel v and zero elsewhere,
whatever the noise, so every saliency column of the lesion table is known by hand.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import TypedDict

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import load_nifti, set_pointwise
from instasal.errors import ImageError, ModelError, OutputExistsError
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.saliency import SmoothGradConfig

W_FLAIR, W_T1W, BIAS = 1.5, -0.5, -2.0
SHAPE = (16, 16, 16)


class LinearLesionModel(nn.Module):
    def __init__(self, in_channels: int = 2, bias: float = BIAS) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 2, kernel_size=1)
        set_pointwise(self.conv, {(1, 0): W_FLAIR, (1, 1): W_T1W}, {1: bias})
        names = ["FLAIR", "T1w", "T2w"][:in_channels]
        self.card = {
            "name": "linear-test",
            "architecture": "1x1x1 convolution",
            "channel_names": names,
            "patch_size": list(SHAPE),
            "threshold": 0.5,
            "gradcam_layer": "conv",
            "target_class": 1,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


class SubjectFiles(TypedDict):
    images: list[Path]
    reference: Path
    affine: np.ndarray


@pytest.fixture
def subject_files(tmp_path: Path, rng: np.random.Generator) -> SubjectFiles:
    """Two bright FLAIR blobs (one matched by the reference) on a noisy head; 2 mm voxels."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    flair = rng.normal(10.0, 0.2, SHAPE).astype(np.float32)
    t1w = rng.normal(10.0, 0.2, SHAPE).astype(np.float32)
    flair[3:6, 3:6, 3:6] = 40.0
    flair[10:12, 10:13, 9:12] = 40.0
    reference = np.zeros(SHAPE, np.uint8)
    reference[4:7, 4:7, 4:7] = 1
    reference[2:4, 12:14, 12:14] = 1  # a missed lesion
    return {
        "images": [
            _write(tmp_path / "sub-01_FLAIR.nii.gz", flair, affine),
            _write(tmp_path / "sub-01_T1w.nii.gz", t1w, affine),
        ],
        "reference": _write(tmp_path / "sub-01_lesions.nii.gz", reference, affine),
        "affine": affine,
    }


SETTINGS = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=3, seed=1), n_true_negatives=2, context="full"
)


def test_table_values_match_the_hand_computed_jacobian(tmp_path, subject_files):
    out = tmp_path / "out"
    result = explain_subject(
        subject_files["images"],
        LinearLesionModel(),
        out,
        reference=subject_files["reference"],
        settings=SETTINGS,
    )
    table = pd.read_csv(result.layout.table, sep="\t")
    assert list(table["type"]) == ["TP", "FP", "FN", "TN", "TN"]
    assert list(table["id"]) == [1, 2, 3, 4, 5]
    assert list(table["volume_mm3"][:3]) == pytest.approx([27 * 8.0, 18 * 8.0, 8 * 8.0])
    for row in table.to_dict("records"):
        domain = result.instances.mask(row["id"])
        # max aggregation of rows that are w_k·δ_v: w_k on Ω, 0 elsewhere
        assert row["peak_FLAIR"] == pytest.approx(W_FLAIR)
        assert row["inside_mean_FLAIR"] == pytest.approx(W_FLAIR)
        assert row["ring_mean_FLAIR"] == 0.0
        assert row["trough_T1w"] == pytest.approx(W_T1W)
        assert row["peak_T1w"] == 0.0
        # reliance = peak_FLAIR / (|peak_FLAIR| + |peak_T1w|), and T1w's peak (max) is 0 here
        assert row["reliance_FLAIR"] == pytest.approx(1.0)
        assert row["reliance_T1w"] == 0.0
        first = np.argwhere(domain)[0]
        assert row["trough_T1w_voxel"] == ",".join(map(str, first))
        saliency = load_nifti(result.layout.smoothgrad(row["id"], "FLAIR")).get_fdata()
        np.testing.assert_allclose(saliency, W_FLAIR * domain, atol=1e-6)
        assert load_nifti(result.layout.smoothgrad(row["id"], "FLAIR")).affine == pytest.approx(
            subject_files["affine"]
        )
    probability = load_nifti(result.layout.probability).get_fdata()
    tp = result.instances.mask(1)
    assert table["prob_max"][0] == pytest.approx(probability[tp].max(), rel=1e-5)
    sidecar = json.loads(result.layout.table_sidecar.read_text())
    assert set(table.columns) <= set(sidecar)
    assert sidecar["peak_FLAIR"]["Units"].startswith("logit")
    report = result.report.read_text()
    assert "Domain 3" in report and "data:image/png;base64," in report
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["counts"]["TP"] == 1 and provenance["counts"]["FN"] == 1


def test_interrupted_run_resumes_and_matches_a_clean_run(tmp_path, subject_files):
    def interrupt(stage: str, done: float, total: float) -> None:
        if stage.startswith("saliency") and "5" in stage:
            raise KeyboardInterrupt

    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2, seed=1), n_true_negatives=2, context="full"
    )
    with pytest.raises(KeyboardInterrupt):
        explain_subject(
            subject_files["images"],
            LinearLesionModel(),
            tmp_path / "run",
            reference=subject_files["reference"],
            settings=settings,
            progress=interrupt,
            report=False,
        )
    assert not (tmp_path / "run" / "sub-01_lesions.tsv").exists()
    resumed = explain_subject(
        subject_files["images"],
        LinearLesionModel(),
        tmp_path / "run",
        reference=subject_files["reference"],
        settings=settings,
        report=False,
    )
    assert resumed.reused_lesions == 4  # the first batch of four finished before the interrupt
    clean = explain_subject(
        subject_files["images"],
        LinearLesionModel(),
        tmp_path / "clean",
        reference=subject_files["reference"],
        settings=settings,
        report=False,
    )
    pd.testing.assert_frame_equal(resumed.table, clean.table)


def test_other_settings_are_refused_without_overwrite(tmp_path, subject_files):
    out = tmp_path / "out"
    explain_subject(
        subject_files["images"], LinearLesionModel(), out, settings=SETTINGS, report=False
    )
    changed = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=4), context="full")
    with pytest.raises(OutputExistsError, match=r"other inputs or settings.*--overwrite"):
        explain_subject(subject_files["images"], LinearLesionModel(), out, settings=changed)
    result = explain_subject(
        subject_files["images"],
        LinearLesionModel(),
        out,
        settings=changed,
        overwrite=True,
        report=False,
    )
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["settings"]["n_samples"] == 4


def test_model_with_other_channels_is_refused_before_any_work(tmp_path, subject_files):
    with pytest.raises(ModelError, match="channel"):
        explain_subject(subject_files["images"], LinearLesionModel(3), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_subject_at_another_voxel_size_is_explained_on_its_own_grid(tmp_path, subject_files):
    model = LinearLesionModel()
    model.card["spacing_mm"] = [1.0, 1.0, 1.0]
    model.card["patch_size"] = [32, 32, 32]  # 16 voxels of the 2 mm subject
    with pytest.warns(UserWarning, match=r"voxel size 2×2×2 mm is resampled to the model's 1×1×1"):
        result = explain_subject(
            subject_files["images"], model, tmp_path / "out", settings=SETTINGS, report=False
        )
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["geometry"]["resampled"] is True
    lesion = result.table.iloc[0]
    flair = load_nifti(result.layout.smoothgrad(int(lesion["id"]), "FLAIR"))
    assert flair.shape == SHAPE
    np.testing.assert_allclose(flair.affine, subject_files["affine"])
    # per axis, linear ×2 up-sampling then box-averaging back gives out_i = ½(up_2i + up_2i+1)
    # with up_2i = ¾x_i + ¼x_i-1 and up_2i+1 = ¾x_i + ¼x_i+1: weight ¾ on x_i itself, the
    # largest Jacobian entry, so the FLAIR peak is w_FLAIR · (¾)³ for an interior lesion
    np.testing.assert_allclose(result.table["peak_FLAIR"], W_FLAIR * 0.75**3, rtol=1e-5)
    np.testing.assert_allclose(result.table["density_peak_FLAIR"], W_FLAIR * 0.75**3 / 8, rtol=1e-5)
    plain = explain_subject(
        subject_files["images"],
        LinearLesionModel(),
        tmp_path / "plain",
        settings=SETTINGS,
        report=False,
    )
    assert list(result.table["volume_mm3"]) == list(plain.table["volume_mm3"])


def test_reference_on_another_grid_names_the_file(tmp_path, subject_files):
    moved = _write(tmp_path / "moved_mask.nii.gz", np.zeros(SHAPE, np.uint8), np.eye(4))
    with pytest.raises(ImageError, match=r"moved_mask\.nii\.gz: affine differs"):
        explain_subject(
            subject_files["images"], LinearLesionModel(), tmp_path / "out", reference=moved
        )
    assert not (tmp_path / "out").exists()


def test_a_subject_without_lesions_gets_a_report_saying_so(tmp_path, rng):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    images = [
        _write(
            tmp_path / f"sub-02_{name}.nii.gz",
            rng.normal(10, 0.2, SHAPE).astype(np.float32),
            affine,
        )
        for name in ("FLAIR", "T1w")
    ]
    quiet = ExplainSettings(smoothgrad=SmoothGradConfig(n_samples=2), context="full")
    never = LinearLesionModel(bias=-100.0)  # lesion logit far below 0 everywhere
    result = explain_subject(images, never, tmp_path / "o", settings=quiet)
    assert len(result.table) == 0
    assert "No lesion was found" in result.report.read_text()
    assert load_nifti(result.layout.mask).get_fdata().sum() == 0


def test_anisotropic_oblique_lps_subject_is_explained_on_its_own_grid(tmp_path, rng):
    """0.9 × 0.9 × 3 mm, tilted 5°, LPS-stored: outputs on the input grid; notes say what."""
    shape = (30, 30, 8)
    flair = rng.normal(10.0, 0.2, shape).astype(np.float32)
    flair[10:18, 12:20, 3:6] = 40.0
    t1w = rng.normal(10.0, 0.2, shape).astype(np.float32)
    angle = np.radians(5.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.9, -0.9, 3.0])  # L, P, S
    images = [
        _write(tmp_path / "sub-03_FLAIR.nii.gz", flair, affine),
        _write(tmp_path / "sub-03_T1w.nii.gz", t1w, affine),
    ]
    model = LinearLesionModel()
    model.card |= {"spacing_mm": [2.0, 2.0, 2.0], "orientation": "RAS"}
    with pytest.warns(UserWarning) as notes:
        result = explain_subject(images, model, tmp_path / "out", settings=SETTINGS, report=False)
    said = " ".join(str(w.message) for w in notes)
    assert "oblique (5.0°" in said and "0.9×0.9×3 mm is resampled" in said
    geometry = json.loads(result.layout.provenance.read_text())["geometry"]
    assert geometry["stored_axcodes"] == "LPS" and geometry["working_axcodes"] == "RAS"
    assert len(result.table) == 1
    lesion = result.table.iloc[0]
    # 8×8×3 voxels of 2.43 mm³; the model's 2 mm voxels quantise the in-plane boundary
    assert 0.8 * 8 * 8 * 3 * 2.43 < lesion["volume_mm3"] < 1.5 * 8 * 8 * 3 * 2.43
    for path in (result.layout.instances, result.layout.smoothgrad(int(lesion["id"]), "FLAIR")):
        written = load_nifti(path)
        assert written.shape == shape
        np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    labels = np.asarray(load_nifti(result.layout.instances).dataobj)
    assert labels[12, 15, 4] == lesion["id"]  # the blob, on the stored grid


def test_trust_adds_columns_and_a_profile_known_for_the_linear_model(tmp_path, subject_files):
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2, seed=1),
        n_true_negatives=0,
        context="full",
        max_lesions=1,
        trust=True,
    )
    result = explain_subject(
        subject_files["images"],
        LinearLesionModel(),
        tmp_path / "out",
        reference=subject_files["reference"],
        settings=settings,
    )
    table = pd.read_csv(result.layout.table, sep="\t")
    sidecar = json.loads(result.layout.table_sidecar.read_text())
    assert set(table.columns) <= set(sidecar)
    for method in ("smoothgrad", "gradcam"):
        assert f"randomisation_passes_{method}" in table.columns
        steps = table[f"randomisation_crossing_{method}"].dropna()
        assert steps.isin(range(1, 6)).all()
    numbers = table[
        ["deletion_auc_smoothgrad_logit", "deletion_auc_random", "insertion_auc_gradcam"]
    ].to_numpy()
    assert np.isfinite(numbers).all()
    profiles = pd.read_csv(result.layout.profiles, sep="\t")
    assert set(profiles["id"]) == set(table["id"])
    # the map is w_k on Ω and 0 elsewhere: shell 0 holds w_k, every outer shell 0 (float32 exact)
    inside = profiles[profiles["shell"] == 0]
    expected = inside["channel"].map({"FLAIR": W_FLAIR, "T1w": W_T1W})
    np.testing.assert_allclose(inside["mean"], expected, atol=1e-6)
    outside = profiles.loc[profiles["shell"] > 0, "mean"].dropna()
    assert len(outside) and np.abs(outside).max() <= 1e-6
    # 2 mm voxels: shells of 2 mm out to 10 mm
    assert sorted(set(profiles["outer_mm"])) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    cascade = pd.read_csv(result.layout.trust_randomisation, sep="\t")
    assert set(cascade["method"]) == {"smoothgrad", "gradcam"}
    near = cascade[cascade["region"] == "near"]
    last = near[near["step"] == near["step"].max()].set_index(["id", "method"])["changed"]
    curves = pd.read_csv(result.layout.trust_curves, sep="\t")
    for row in table.to_dict(orient="records"):
        for method in ("smoothgrad", "gradcam"):
            assert last[(row["id"], method)] == row[f"randomisation_passes_{method}"]
        # untouched input: deletion at 0 and insertion at 1 give the table's mean probability
        # (the same float32 forward pass; rtol covers its round-off)
        own = curves[curves["id"] == row["id"]]
        untouched = pd.concat(
            [
                own[(own["kind"] == "deletion") & (own["fraction"] == 0)],
                own[(own["kind"] == "insertion") & (own["fraction"] == 1)],
            ]
        )
        assert len(untouched) == 2 * own.groupby(["order", "seed", "variant"]).ngroups
        np.testing.assert_allclose(untouched["prob_mean"], row["prob_mean"], rtol=1e-5)
    # the linear model reads every channel: each has an ablation share
    for channel in ("FLAIR", "T1w"):
        shares = table[f"ablation_share_{channel}"].to_numpy(float)
        assert np.isfinite(shares).all() and (np.abs(shares) <= 1 + 1e-9).all()
    html = result.layout.report.read_text()
    assert "Can the maps be trusted?" in html
    assert '<a href="#trust">' in html.split('id="legend"')[1].split("<h2")[0]  # Definitions
    assert "Randomisation, SmoothGrad (max):" in html and 'alt="deletion and insertion' in html
    assert "Modality reliance: in " in html


AUTHORS_LAYER = "model.1.submodule.2.conv"


@pytest.mark.parametrize(
    ("flags", "field", "expected"),
    [
        ([], "trust", False),
        (["--trust"], "trust", True),
        ([], "gradcam.layer", None),
        (["--gradcam-layer", "model.1.submodule.2.conv"], "gradcam.layer", AUTHORS_LAYER),
    ],
)
def test_cli_flags_reach_the_settings(tmp_path, subject_files, monkeypatch, flags, field, expected):
    import instasal.pipeline
    from instasal.cli import run_app
    from instasal.errors import ConfigurationError

    seen: list[ExplainSettings] = []

    def record(*args, settings=None, **kwargs):
        seen.append(settings)
        raise ConfigurationError("stopped after the settings")

    monkeypatch.setattr(instasal.pipeline, "explain_subject", record)
    image = str(subject_files["images"][0])
    assert run_app(["explain", image, "--out", str(tmp_path / "out"), *flags]) == 2
    assert operator.attrgetter(field)(seen[-1]) == expected
