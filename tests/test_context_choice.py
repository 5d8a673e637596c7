"""A model without a patch size: full context is noted, refused over the budget, or asked for."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PointwiseLinear, load_nifti, write_linear_subject
from instasal.errors import ConfigurationError, InstasalWarning
from instasal.io import read_subject
from instasal.models import load_model
from instasal.pipeline import ExplainSettings, context_choice, explain_subject
from instasal.prepare import prepare_subject
from instasal.saliency import SmoothGradConfig
from instasal.saliency.deployed import DeployedForward
from instasal.typing import Context

N_SAMPLES = 3


def _subject(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    write_linear_subject(tmp_path / "data", "sub-01", rng)
    anat = tmp_path / "data" / "sub-01" / "anat"
    return [anat / "sub-01_FLAIR.nii.gz", anat / "sub-01_T1w.nii.gz"]


def _no_patch_model(tmp_path: Path) -> Path:
    """The pointwise linear network as TorchScript whose card states no patch size."""
    import torch

    path = tmp_path / "nopatch.pt"
    torch.jit.save(torch.jit.script(PointwiseLinear()), str(path))
    path.with_suffix(".json").write_text(json.dumps({"threshold": 0.5}))
    return path


def _explained_voxels(out: Path) -> int:
    (labels,) = out.glob("*_desc-instances_dseg.nii.gz")
    return int((np.asarray(load_nifti(labels).dataobj) > 0).sum())


def test_over_the_budget_a_full_context_is_refused_before_any_lesion(tmp_path, rng):
    images = _subject(tmp_path, rng)
    model_path = _no_patch_model(tmp_path)
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=N_SAMPLES), gradcam=None, n_true_negatives=0
    )
    out = tmp_path / "out"
    with pytest.raises(ConfigurationError) as caught:
        explain_subject(
            images, load_model(model_path), out, settings=settings, progress=None, budget_s=0.0
        )
    message = str(caught.value)
    assert "\n" not in message
    rows = int(re.search(r"(\d+) Jacobian rows", message)[1])  # type: ignore[index]
    voxels = _explained_voxels(out)
    assert voxels > 0
    assert rows == N_SAMPLES * voxels  # one row per domain voxel and noise draw (max aggregation)
    assert "--yes to go ahead" in message
    assert f'"patch_size": [X, Y, Z] in {model_path.with_suffix(".json")}' in message
    assert (out / "lesions").is_dir()
    assert not list((out / "lesions").iterdir())  # no lesion explained
    assert not list(out.glob("*_lesions.tsv"))


def test_mean_aggregation_counts_one_row_per_domain_and_draw(tmp_path, rng):
    images = _subject(tmp_path, rng)
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=N_SAMPLES, aggregation="mean"),
        gradcam=None,
        n_true_negatives=0,
    )
    out = tmp_path / "out"
    with pytest.raises(ConfigurationError, match=f" {N_SAMPLES} Jacobian rows"):
        explain_subject(
            images, load_model(_no_patch_model(tmp_path)), out, settings=settings, budget_s=0.0
        )


def test_without_a_budget_full_context_runs(tmp_path, rng):
    images = _subject(tmp_path, rng)
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None, n_true_negatives=0, context="full"
    )
    result = explain_subject(
        images,
        load_model(_no_patch_model(tmp_path)),
        tmp_path / "out",
        settings=settings,
        progress=None,
        report=False,
        budget_s=None,
    )
    assert len(result.table) == 1


def test_under_the_budget_full_context_is_noted(tmp_path, rng):
    images = _subject(tmp_path, rng)
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None, n_true_negatives=0
    )
    with pytest.warns(InstasalWarning, match="states no patch size, so saliency differentiates"):
        result = explain_subject(
            images,
            load_model(_no_patch_model(tmp_path)),
            tmp_path / "out",
            settings=settings,
            progress=None,
            report=False,
        )
    assert len(result.table) == 1


def test_patch_context_without_a_patch_size_is_refused_before_segmenting(tmp_path, rng):
    images = _subject(tmp_path, rng)
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None, n_true_negatives=0, context="patch"
    )
    with pytest.raises(ConfigurationError, match="context patch needs the model's patch size"):
        explain_subject(
            images, load_model(_no_patch_model(tmp_path)), tmp_path / "out", settings=settings
        )
    assert not (tmp_path / "out").exists()


NNUNET_OBSTACLE = "the prediction is nnU-Net's own predictor"


@pytest.mark.parametrize(
    ("asked", "patch", "obstacle", "expected", "noted"),
    [
        (None, [8, 8, 8], None, "deployed", False),  # the prediction's own sliding window
        (None, None, None, "full", True),  # no patch: the prediction is one whole-volume pass
        ("deployed", None, None, "full", True),
        (None, [8, 8, 8], NNUNET_OBSTACLE, "patch", True),  # not reproduced: said, not silent
        ("patch", [8, 8, 8], None, "patch", False),
        ("full", [8, 8, 8], NNUNET_OBSTACLE, "full", False),
    ],
)
def test_the_default_context_is_the_predictions_own_forward(
    asked: Context | None,
    patch: list[int] | None,
    obstacle: str | None,
    expected: str,
    noted: bool,
) -> None:
    card = {"name": "m", "patch_size": patch}
    context, note = context_choice.resolve_context(asked, card, obstacle)
    assert context == expected
    assert (note is not None) == noted
    if note is not None and obstacle is not None:
        assert obstacle in note and "explained_detects" in note
    elif note is not None:  # full for want of a patch size: said, with how to state one
        assert "states no patch size" in note and '"patch_size": [X, Y, Z]' in note


def test_asking_for_deployed_where_it_is_not_reproduced_is_refused() -> None:
    card = {"name": "m", "patch_size": [8, 8, 8]}
    with pytest.raises(ConfigurationError, match="context deployed is not available"):
        context_choice.resolve_context("deployed", card, NNUNET_OBSTACLE)


@pytest.mark.slow
def test_nnunet_folders_default_to_nnunets_own_forward(
    trained_folder: Path, flipped_subject: Path, tmp_path: Path
) -> None:
    """nnU-Net's default resampling is rebuilt in the graph: deployed, nnU-Net's forward stated
    on the subject; plans resampling otherwise fall back to patch with a note, never silently."""
    pytest.importorskip("nnunetv2")
    files = [flipped_subject / f"case_{c:04d}.nii.gz" for c in (0, 1)]
    with pytest.warns(InstasalWarning, match="resampled"):
        prepared = prepare_subject(read_subject(files), load_model(trained_folder / "fold_all"))
    assert context_choice.deployed_obstacle(prepared) is None
    card = {"name": "nnunet", "patch_size": [16, 20, 24]}
    assert context_choice.resolve_context(None, card, None) == ("deployed", None)
    stating = context_choice.with_deployed_forward(prepared, "deployed", tta=True)
    stated = getattr(stating.network, "deployed", None)
    assert isinstance(stated, DeployedForward) and stated.shape == tuple(prepared.x.shape[1:])
    assert type(stated.network).__name__ == "MirroredAverage"  # the prediction's mirroring
    assert not hasattr(prepared.network, "deployed")  # the prepared network is left alone
    assert context_choice.with_deployed_forward(prepared, "patch", tta=True) is prepared

    crafted = tmp_path / "crafted"
    shutil.copytree(trained_folder, crafted)
    plans = json.loads((crafted / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["resampling_fn_data"] = "resample_torch_fornnunet"
    (crafted / "plans.json").write_text(json.dumps(plans))
    with pytest.warns(InstasalWarning, match="resampled"):
        other = prepare_subject(read_subject(files), load_model(crafted / "fold_all"))
    obstacle = context_choice.deployed_obstacle(other)
    assert obstacle is not None and "resample_torch_fornnunet" in obstacle
    context, note = context_choice.resolve_context(None, card, obstacle)
    assert context == "patch" and note is not None and "resample_torch_fornnunet" in note
