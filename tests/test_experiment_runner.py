"""Dataset-level experiments with a pointwise model, whose answers are known without running it:
a 1×1×1 convolution sees no context, so keeping more context changes nothing, and a lesion copied
anywhere keeps its voxel values and is detected under every relocation condition."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from torch import nn

from instasal.experiments.runner import (
    run_context_experiment,
    run_relocation_experiment,
    subject_quota,
)
from instasal.instances import Instance, Instances
from instasal.models import load_model
from instasal.pipeline.cohort import subject_seed
from instasal.pipeline.per_lesion import sample_domains


@pytest.fixture
def good_dataset(linear_dataset):
    broken = linear_dataset / "sub-03"
    for path in sorted(broken.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    broken.rmdir()
    return linear_dataset


def test_context_curve_of_a_pointwise_model_is_flat(tmp_path, good_dataset, linear_model_path):
    model = load_model(linear_model_path)
    summary = run_context_experiment(
        good_dataset, model, tmp_path / "ctx", volume_band_mm3=(100, 300), max_distance_mm=6
    )
    curve = pd.read_csv(tmp_path / "ctx" / "context_curve.tsv", sep="\t")
    assert list(curve["distance_mm"]) == [0.0, 2.0, 4.0, 6.0]
    np.testing.assert_allclose(curve["mean_probability"], curve["mean_probability"][0], rtol=1e-5)
    assert (curve["detection_rate"] == 1.0).all()
    assert summary["plateau_mm"] == 0.0
    assert summary["n_lesions"] == 2
    assert json.loads((tmp_path / "ctx" / "context_summary.json").read_text())["n_lesions"] == 2
    capped = run_context_experiment(
        good_dataset,
        model,
        tmp_path / "capped",
        volume_band_mm3=(100, 300),
        max_distance_mm=6,
        max_lesions=2,
    )
    assert capped["n_lesions"] == 2  # one lesion per subject: the cap counts lesions, not rows


def test_relocated_lesions_of_a_pointwise_model_are_always_detected(
    tmp_path, good_dataset, linear_model_path
):
    model = load_model(linear_model_path)
    summary = run_relocation_experiment(good_dataset, model, tmp_path / "rel", shell_mm=2.0)
    table = pd.read_csv(tmp_path / "rel" / "relocation.tsv", sep="\t")
    placed = table[table["placed"]]
    assert set(placed["condition"]) == {"white_matter", "outside", "outside_with_shell"}
    assert placed["detected"].all()
    assert summary["detection_rate"]["outside"] == 1.0
    assert (tmp_path / "rel" / "relocation.png").stat().st_size > 0


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


def _drawn(dataset: Path, model: nn.Module, out: Path, seed: int) -> dict[str, set[int]]:
    run_context_experiment(
        dataset, model, out, volume_band_mm3=(100, 300), max_distance_mm=2, max_lesions=4, seed=seed
    )
    records = pd.read_csv(out / "context_records.tsv", sep="\t")
    return {str(s): set(group["lesion_id"]) for s, group in records.groupby("subject")}


def test_max_lesions_draws_at_random_with_the_seed_spread_over_subjects(
    tmp_path: Path, rows_dataset: Path, linear_model_path: Path
) -> None:
    model = load_model(linear_model_path)
    draws = [_drawn(rows_dataset, model, tmp_path / f"seed{s}", s) for s in range(4)]
    assert _drawn(rows_dataset, model, tmp_path / "again", 0) == draws[0]
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


def test_a_subject_short_of_its_share_leaves_it_to_the_next() -> None:
    assert subject_quota(None, 0, 3) is None
    assert subject_quota(5, 0, 2) == 3  # rounded up
    assert subject_quota(5, 1, 1) == 4  # the first gave 1 of its 3
    assert subject_quota(5, 6, 1) == 0
