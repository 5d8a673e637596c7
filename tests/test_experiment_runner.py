"""Dataset-level experiments with a pointwise model, whose answers are known without running it:
a 1×1×1 convolution sees no context, so keeping more context changes nothing, and a lesion copied
anywhere keeps its voxel values and is detected under every relocation condition."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import set_card
from instasal.errors import ConfigurationError, OutputExistsError
from instasal.experiments import (
    ExperimentOptions,
    PatchFullResult,
    context_figure,
    relocation_figure,
    run_context_experiment,
    run_patch_full_experiment,
    run_relocation_experiment,
    run_uncertainty_experiment,
    write_experiment,
)
from instasal.experiments.subjects import (
    explained_probability,
    prepared_subjects,
    sampled_tp_lesions,
    subject_quota,
)
from instasal.instances import Instance, Instances
from instasal.models import load_model
from instasal.pipeline.cohort import subject_seed
from instasal.pipeline.per_lesion import sample_domains
from instasal.typing import Context


@pytest.fixture
def good_dataset(linear_dataset):
    broken = linear_dataset / "sub-03"
    for path in sorted(broken.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    broken.rmdir()
    return linear_dataset


def test_context_curve_of_a_pointwise_model_is_flat(tmp_path, good_dataset, linear_model_path):
    model = load_model(linear_model_path)
    result = run_context_experiment(
        good_dataset, model, volume_band_mm3=(100, 300), max_distance_mm=6
    )
    assert list(result.curve["distance_mm"]) == [0.0, 2.0, 4.0, 6.0]
    np.testing.assert_allclose(
        result.curve["mean_probability"], result.curve["mean_probability"][0], rtol=1e-5
    )
    assert (result.curve["detection_rate"] == 1.0).all()
    assert result.plateau_mm == 0.0
    assert result.n_lesions == 2
    write_experiment(result, tmp_path / "ctx", context_figure(result))
    curve = pd.read_csv(tmp_path / "ctx" / "context_curve.tsv", sep="\t")
    pd.testing.assert_frame_equal(curve, result.curve)
    summary = json.loads((tmp_path / "ctx" / "context_summary.json").read_text())
    assert summary == result.summary() and summary["n_lesions"] == 2
    capped = run_context_experiment(
        good_dataset, model, volume_band_mm3=(100, 300), max_distance_mm=6, max_lesions=2
    )
    assert capped.n_lesions == 2  # one lesion per subject: the cap counts lesions, not rows


def test_relocated_lesions_of_a_pointwise_model_are_always_detected(
    tmp_path, good_dataset, linear_model_path
):
    model = load_model(linear_model_path)
    result = run_relocation_experiment(good_dataset, model, shell_mm=2.0)
    placed = result.table[result.table["placed"]]
    assert set(placed["condition"]) == {"white_matter", "outside", "outside_with_shell"}
    assert placed["detected"].all()
    assert result.detection_rate()["outside"] == 1.0
    assert result.n_placed() == dict(placed.groupby("condition").size())
    written = write_experiment(result, tmp_path / "rel", relocation_figure(result))
    assert [path.name for path in written] == [
        "relocation.tsv",
        "relocation.png",
        "relocation_summary.json",
    ]
    assert (tmp_path / "rel" / "relocation.png").read_bytes()[:4] == b"\x89PNG"


def _write_row_of_lesions(root: Path, participant: str, rng: np.random.Generator) -> None:
    """A 2 mm subject with ten bright 3³ FLAIR lesions in a row along x (ids 1…10 from left to
    right: raster order), each its own reference lesion."""
    shape = (62, 10, 10)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    flair = np.where(brain, rng.normal(10, 0.2, shape), 0).astype(np.float32)
    t1w = np.where(brain, rng.normal(10, 0.2, shape), 0).astype(np.float32)
    for start in range(2, 60, 6):
        flair[start : start + 3, 3:6, 3:6] = 40.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {
        root / participant / "anat" / f"{participant}_FLAIR.nii.gz": flair,
        root / participant / "anat" / f"{participant}_T1w.nii.gz": t1w,
        root / "derivatives" / "manual" / participant / "anat" / f"{participant}"
        "_desc-lesion_mask.nii.gz": (flair > 30).astype(np.uint8),
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), path)


@pytest.fixture
def rows_dataset(tmp_path: Path, rng: np.random.Generator) -> Path:
    for participant in ("sub-01", "sub-02"):
        _write_row_of_lesions(tmp_path / "rows", participant, rng)
    return tmp_path / "rows"


def _drawn(dataset: Path, model: nn.Module, seed: int) -> dict[str, set[int]]:
    result = run_context_experiment(
        dataset,
        model,
        ExperimentOptions(seed=seed),
        volume_band_mm3=(100, 300),
        max_distance_mm=2,
        max_lesions=4,
    )
    return {str(s): set(group["lesion_id"]) for s, group in result.records.groupby("subject")}


def test_max_lesions_draws_at_random_with_the_seed_spread_over_subjects(
    rows_dataset: Path, linear_model_path: Path
) -> None:
    model = load_model(linear_model_path)
    draws = [_drawn(rows_dataset, model, s) for s in range(4)]
    assert _drawn(rows_dataset, model, 0) == draws[0]
    row = Instances(np.zeros((62, 10, 10), np.int32), np.eye(4), _tp_records(10))
    for seed, drawn in enumerate(draws):
        # the cap of 4 spread over the two subjects, not filled by the first one
        assert {s: len(ids) for s, ids in drawn.items()} == {"sub-01": 2, "sub-02": 2}
        for subject, ids in drawn.items():
            # explain's draw, seeded by the run's seed and the subject
            expected = sample_domains(row, 2, subject_seed(seed, subject))
            assert ids == {r.id for r in expected}
    # the raster order would keep lesions 1 and 2 of each subject, the leftmost, every time
    chosen = [ids for drawn in draws for ids in drawn.values()]
    assert {1, 2} not in chosen
    assert np.mean([i for ids in chosen for i in ids]) > 3.5


def _tp_records(n: int) -> tuple[Instance, ...]:
    """``n`` TP records with ids 1…n (all sample_domains reads of them)."""
    return tuple(
        Instance(i, 216.0, 27, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), ((0, 1), (0, 1), (0, 1)), "TP")
        for i in range(1, n + 1)
    )


def test_the_experiments_one_loop_samples_the_eligible_tp_lesions_under_the_cap(
    rows_dataset: Path, linear_model_path: Path
) -> None:
    """The loop the context, relocation and patch-vs-full runs share: eligible TP lesions only,
    drawn as explain draws them, a cap of 5 spread over two subjects as 3 then 2."""
    model = load_model(linear_model_path)
    sampled = {
        prepared.files.subject_id: lesions
        for prepared, lesions in sampled_tp_lesions(
            rows_dataset, model, eligible=lambda r: r.id % 2 == 0, max_lesions=5, seed=7
        )
    }
    even = Instances(
        np.zeros((62, 10, 10), np.int32),
        np.eye(4),
        tuple(r for r in _tp_records(10) if r.id % 2 == 0),
    )
    for subject, quota in (("sub-01", 3), ("sub-02", 2)):
        expected = sample_domains(even, quota, subject_seed(7, subject))
        assert [r.id for r in sampled[subject]] == [r.id for r in expected]
        assert all(r.kind == "TP" and r.id % 2 == 0 for r in sampled[subject])


def test_patch_vs_full_draws_its_lesions_through_the_same_loop(
    rows_dataset: Path, linear_model_path: Path
) -> None:
    model = load_model(linear_model_path)
    result = run_patch_full_experiment(
        rows_dataset, model, ExperimentOptions(seed=2), max_lesions=3, n_samples=1
    )
    table = result.table
    assert result.summary()["n_lesions"] == len(table) == 3
    row = Instances(np.zeros((62, 10, 10), np.int32), np.eye(4), _tp_records(10))
    for subject, quota in (("sub-01", 2), ("sub-02", 1)):
        expected = {r.id for r in sample_domains(row, quota, subject_seed(2, subject))}
        assert set(table.loc[table["subject"] == subject, "lesion_id"]) == expected


def test_writing_is_refused_before_any_file_where_one_exists(tmp_path: Path) -> None:
    table = pd.DataFrame({"subject": ["sub-01"], "lesion_id": [1], "cosine": [0.25]})
    result = PatchFullResult(table, "patch", ())
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "patch_vs_full_summary.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"patch_vs_full_summary\.json: exists already"):
        write_experiment(result, tmp_path / "pf")
    assert not (tmp_path / "pf" / "patch_vs_full.tsv").exists()  # the table, written first
    with pytest.raises(ConfigurationError, match="PatchFullResult has no figure"):
        write_experiment(result, tmp_path / "figure", object())  # type: ignore[arg-type]
    written = write_experiment(result, tmp_path / "pf", overwrite=True)
    assert [path.name for path in written] == ["patch_vs_full.tsv", "patch_vs_full_summary.json"]
    assert json.loads(written[1].read_text()) == {
        "n_lesions": 1,
        "compared_with": "full",
        "context": "patch",
        "context_notes": [],
        "median": {"cosine": 0.25},
        "min": {"cosine": 0.25},
        "max": {"cosine": 0.25},
    }


def test_a_call_written_for_the_old_signatures_is_refused(tmp_path: Path) -> None:
    runs = (
        run_context_experiment,
        run_relocation_experiment,
        run_patch_full_experiment,
        run_uncertainty_experiment,
    )
    for run in runs:
        with pytest.raises(TypeError, match="options must be an ExperimentOptions, got PosixPath"):
            run(tmp_path, nn.Identity(), tmp_path / "out")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unexpected keyword argument 'seed'"):
            run(tmp_path, nn.Identity(), seed=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"context must be one of .* got 'window'"):
        ExperimentOptions(context="window")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_a_subject_short_of_its_share_leaves_it_to_the_next() -> None:
    assert subject_quota(None, 0, 3) is None
    assert subject_quota(5, 0, 2) == 3  # rounded up
    assert subject_quota(5, 1, 1) == 4  # the first gave 1 of its 3
    assert subject_quota(5, 6, 1) == 0


def test_the_context_experiment_runs_in_the_context_asked_and_records_it(
    good_dataset: Path, linear_model_path: Path
) -> None:
    model = load_model(linear_model_path)
    curves = {}
    contexts: list[Context | None] = [None, "deployed", "patch", "full"]
    for context in contexts:
        result = run_context_experiment(
            good_dataset,
            model,
            ExperimentOptions(context=context),
            volume_band_mm3=(100, 300),
            max_distance_mm=2,
        )
        expected = context or "deployed"  # explain's default for a card with a patch size
        assert result.context == expected and result.context_notes == ()
        summary = result.summary()
        assert summary["context"] == expected and summary["context_notes"] == []
        assert set(result.records["context"]) == {expected}
        curves[context] = result.records["mean_probability"].to_numpy()
    # a pointwise model's probability does not depend on the forward window
    for context in contexts:
        np.testing.assert_allclose(curves[context], curves["full"], rtol=1e-6)


class _WindowMean(nn.Module):
    """Lesion logit 0.1·(FLAIR − 25) + 0.1·(mean FLAIR over the input it is given): the same at
    every voxel whatever the window except for the mean, so each context gives another value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flair = x[:, :1]
        logit = 0.1 * (flair - 25.0) + 0.1 * flair.mean(dim=(2, 3, 4), keepdim=True)
        return torch.cat([-logit, logit], dim=1)


def _window_mean_model() -> nn.Module:
    model = _WindowMean()
    set_card(
        model,
        {
            "name": "window mean",
            "architecture": "module",
            "threshold": 0.5,
            "patch_size": [20, 16, 16],
            "channel_names": ["FLAIR", "T1w"],
            "normalisation": "none",
        },
    )
    return model


def test_explained_probability_is_the_forward_pass_of_the_context(good_dataset: Path) -> None:
    model = _window_mean_model()
    found: dict[str, np.ndarray] = {}
    for context in ("deployed", "patch", "full"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = next(prepared_subjects(good_dataset, model, context=context))
        assert prepared.context == context
        (lesion,) = prepared.instances.of_kind("TP")
        domain = prepared.instances.mask(lesion.id)
        probability = explained_probability(prepared, model, prepared.x, domain)
        assert np.isnan(probability[~domain]).all()
        found[context] = probability[domain]
        if context == "deployed":  # the prediction itself, to float32 round-off
            np.testing.assert_allclose(found[context], prepared.probability[domain], atol=1e-6)
        # by hand (softmax of ±logit): one pass over the whole volume, or over the patch, 20
        # voxels along x centred on the lesion (x 6–8) and shifted into the volume: x 0–19
        x = prepared.x.numpy()[0]
        window = {"full": x, "patch": x[:20]}.get(context)
        if window is not None:
            logit = 0.1 * (x[domain] - 25.0) + 0.1 * window.mean()
            np.testing.assert_allclose(found[context], 1 / (1 + np.exp(-2 * logit)), rtol=1e-5)
    assert (found["patch"] > found["full"] + 1e-3).all()
