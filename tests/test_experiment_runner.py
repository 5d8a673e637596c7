"""Dataset-level experiments with a pointwise model, whose answers are known without running it:
a 1×1×1 convolution sees no context, so keeping more context changes nothing, and a lesion copied
anywhere keeps its voxel values and is detected under every relocation condition."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from instasal.experiments.runner import run_context_experiment, run_relocation_experiment
from instasal.models import load_model


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
