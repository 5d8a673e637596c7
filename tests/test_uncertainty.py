"""Uncertainty, candidate domains for missed lesions and the Q3 experiment, against oracles.

The oracles: a model that commutes with flips has no flip spread; a model that reads the voxel
diagonally ahead shows, after flipping back, the voxel ahead or behind on each flipped axis; a
dropout model's passes take one of two known values; an ensemble's statistics are those of its
members' sigmoids; hand-placed masks give known candidate kinds; and a pointwise model on a dataset
with a bright (found), a dim missed (p = 0.37) and a dim healthy (p = 0.26) blob gives a known
curve.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit
from torch import nn

from conftest import LINEAR_AFFINE, LINEAR_SHAPE, PointwiseLinear
from instasal.cli import run_app
from instasal.errors import ConfigurationError, ModelError, OutputExistsError
from instasal.experiments import run_uncertainty_experiment, uncertainty_figure, write_experiment
from instasal.experiments.uncertainty_sweep import default_levels
from instasal.instances import Instances, classify_instances, find_instances
from instasal.models import ModelCard, attach_card, load_model
from instasal.models.uncertainty import (
    Uncertainty,
    classify_candidates,
    ensemble_uncertainty,
    find_candidates,
    flip_uncertainty,
    mc_dropout_uncertainty,
    voxel_uncertainty,
)


def _card(name: str = "test", **fields: object) -> ModelCard:
    return ModelCard(name=name, architecture="module", **fields)  # type: ignore[arg-type]


class _Convolution(nn.Module):
    """Lesion logit = a 3×3×3 convolution of FLAIR (zero padding); background logit 0."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, kernel_size=3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _convolution(kernel: torch.Tensor) -> _Convolution:
    return attach_card(_Convolution(kernel), _card(patch_size=None))


@pytest.fixture
def volume(rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.normal(size=(2, 7, 6, 5)).astype(np.float32))


def test_flips_of_a_flip_equivariant_model_have_no_spread(volume):
    model = _convolution(torch.full((3, 3, 3), 0.2))
    plain = expit(torch.nn.functional.avg_pool3d(volume[None, :1], 3, 1, 1).numpy()[0, 0] * 5.4)
    result = flip_uncertainty(model, volume)
    assert result.method == "tta" and result.n_passes == 8
    np.testing.assert_allclose(result.sd, 0.0, atol=1e-6)
    np.testing.assert_allclose(result.mean, plain, atol=1e-6)
    np.testing.assert_allclose(result.max, plain, atol=1e-6)


def test_flip_passes_are_flipped_back(volume):
    kernel = torch.zeros(3, 3, 3)
    kernel[2, 2, 2] = 1.0  # the lesion logit at v is FLAIR at v + (1, 1, 1)
    result = flip_uncertainty(_convolution(kernel), volume)
    padded = np.pad(volume[0].numpy(), 1)
    shape = volume.shape[1:]
    passes = []
    for signs in itertools.product((1, -1), repeat=3):  # -1: that axis was flipped
        window = tuple(slice(1 + s, 1 + s + n) for s, n in zip(signs, shape, strict=True))
        passes.append(expit(padded[window]))
    np.testing.assert_allclose(result.mean, np.mean(passes, axis=0), atol=1e-6)
    np.testing.assert_allclose(result.sd, np.std(passes, axis=0), atol=1e-6)
    np.testing.assert_allclose(result.max, np.max(passes, axis=0), atol=1e-6)
    assert float(result.sd.max()) > 0.05


class _Dropping(nn.Module):
    """Lesion logit = dropout(BatchNorm(FLAIR)); BatchNorm in eval mode is ×2, in train mode 0."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.norm = nn.BatchNorm3d(1, eps=0.0)
        self.drop = nn.Dropout(p)
        running_var = self.norm.running_var
        assert running_var is not None
        with torch.no_grad():
            running_var.fill_(0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = self.drop(self.norm(x[:, :1]))
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)


def _dropping(p: float = 0.5) -> _Dropping:
    return attach_card(_Dropping(p), _card("dropping", patch_size=None))


def test_mc_dropout_samples_dropout_only_and_restores_modes():
    model = _dropping()
    model.train()
    model.norm.eval()  # a mixed state, which must come back as it was
    before = [m.training for m in model.modules()]
    x = torch.full((2, 8, 8, 8), 0.5)
    rng_state = torch.get_rng_state()
    result = mc_dropout_uncertainty(model, x, n_samples=10, seed=3)
    kept = expit(2.0 * 0.5 * 2.0)  # BatchNorm in eval (×2), dropout keeps and scales by 2
    # every pass is 0.5 (dropped) or `kept`: mean, sd and max follow from the kept fraction q
    kept_passes = (result.mean - 0.5) / (kept - 0.5) * 10
    np.testing.assert_allclose(kept_passes, np.round(kept_passes), atol=1e-4)
    q = np.round(kept_passes) / 10
    np.testing.assert_allclose(result.sd, np.sqrt(q * (1 - q)) * (kept - 0.5), atol=1e-5)
    np.testing.assert_allclose(result.max, np.where(q > 0, kept, 0.5), atol=1e-6)
    assert 0.4 < float(q.mean()) < 0.6
    assert result.method == "mc_dropout" and result.n_passes == 10
    assert [m.training for m in model.modules()] == before
    assert torch.equal(torch.get_rng_state(), rng_state)
    again = mc_dropout_uncertainty(model, x, n_samples=10, seed=3)
    other = mc_dropout_uncertainty(model, x, n_samples=10, seed=4)
    np.testing.assert_array_equal(again.mean, result.mean)
    assert not np.array_equal(other.mean, result.mean)


def test_mc_dropout_restores_modes_after_an_error():
    model = _dropping()
    model.eval()
    with pytest.raises(ModelError, match="expects 2 channel"):
        mc_dropout_uncertainty(model, torch.zeros(3, 4, 4, 4))
    assert not any(m.training for m in model.modules())


def test_mc_dropout_refuses_a_model_without_dropout():
    with pytest.raises(ConfigurationError, match=r"'dropping' has no dropout .* all have p = 0"):
        mc_dropout_uncertainty(_dropping(p=0.0), torch.zeros(2, 4, 4, 4))
    linear = attach_card(PointwiseLinear(), _card("linear"))
    with pytest.raises(ConfigurationError, match=r"'linear' has no dropout .*no module"):
        mc_dropout_uncertainty(linear, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ConfigurationError, match="n_samples must be an integer >= 1, got 0"):
        mc_dropout_uncertainty(_dropping(), torch.zeros(2, 4, 4, 4), n_samples=0)


def test_the_builtin_unet_has_no_dropout_to_sample():
    with pytest.raises(ConfigurationError, match=r"'unet' .* \(trained with dropout 0.0\)"):
        mc_dropout_uncertainty(load_model("unet"), torch.zeros(2, 16, 16, 16))


def test_ensemble_statistics_are_those_of_the_members(volume):
    first = attach_card(PointwiseLinear(), _card("first"))
    second = attach_card(PointwiseLinear(), _card("second"))
    with torch.no_grad():
        second.conv.weight[1, 0] = -1.0
    flair, t1w = volume[0].numpy(), volume[1].numpy()
    members = np.stack([expit(1.5 * flair - 0.5 * t1w - 2), expit(-flair - 0.5 * t1w - 2)])
    result = ensemble_uncertainty([first, second], volume)
    np.testing.assert_allclose(result.mean, members.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(result.sd, np.abs(members[0] - members[1]) / 2, atol=1e-6)
    np.testing.assert_allclose(result.max, members.max(axis=0), atol=1e-6)
    assert result.method == "ensemble" and result.n_passes == 2
    through = voxel_uncertainty(first, volume, "ensemble", ensemble=[second])
    np.testing.assert_array_equal(through.sd, result.sd)


def test_ensemble_refuses_members_that_disagree(volume):
    first = attach_card(PointwiseLinear(), _card("first"))
    swapped = attach_card(PointwiseLinear(), _card("swapped", channel_names=("T1w", "FLAIR")))
    with pytest.raises(ModelError, match=r"'swapped' has channel_names .* members must agree"):
        ensemble_uncertainty([first, swapped], volume)
    with pytest.raises(ConfigurationError, match="at least 2 models, got 1"):
        ensemble_uncertainty([first], volume)


def test_uncertainty_arguments_are_checked(volume):
    model = attach_card(PointwiseLinear(), _card("linear"))
    with pytest.raises(ConfigurationError, match=r"method must be one of .* got 'bagging'"):
        voxel_uncertainty(model, volume, "bagging")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ensemble models are given but method is 'tta'"):
        voxel_uncertainty(model, volume, "tta", ensemble=[model])
    with pytest.raises(
        ConfigurationError, match=r"x must have 4 dimensions \[C, X, Y, Z\].*got shape \(7, 6\)"
    ):
        flip_uncertainty(model, volume[0, :, :, 0])
    flat = np.zeros((2, 2, 2), np.float32)
    with pytest.raises(ConfigurationError, match=r"signal must be one of .* got 'median'"):
        Uncertainty(flat, flat, flat, "tta", 8).signal("median")  # type: ignore[arg-type]


@pytest.fixture
def placed() -> dict[str, np.ndarray]:
    """Hand-placed blocks on a 1 mm grid; the comments say what each must become."""
    shape = (20, 20, 20)
    predicted = np.zeros(shape, bool)
    reference = np.zeros(shape, bool)
    signal = np.zeros(shape)
    predicted[2:5, 2:5, 2:5] = reference[2:5, 2:5, 2:5] = True  # P, a TP
    signal[5:7, 2:5, 2:5] = 0.3  # touches P face-on: excluded
    reference[10:13, 2:4, 2:4] = True  # a missed lesion (FN) ...
    signal[10:13, 2:4, 2:4] = 0.3  # ... found
    signal[2:4, 12:14, 12:14] = 0.2  # no lesion: false alarm (only at level <= 0.2)
    reference[15:20, 15:17, 2:4] = True  # a lesion whose near end is predicted (TP) ...
    predicted[15:17, 15:17, 2:4] = True
    signal[18:20, 15:17, 2:4] = 0.3  # ... and its far end apart from it: other lesion
    predicted[5:7, 5:7, 7:9] = True  # Q
    signal[7:9, 7:9, 7:9] = 0.3  # meets Q only at an edge (18-neighbours): excluded
    predicted[14:16, 5:7, 10:12] = True  # R
    signal[16:18, 7:9, 12:14] = 0.3  # meets R only at a corner (26- but not 18-neighbours)
    signal[0, 19, 0:5] = 0.3  # 5 voxels = 5 mm³: too small
    return {"signal": signal, "predicted": predicted, "reference": reference}


def _typed(predicted: np.ndarray, reference: np.ndarray) -> Instances:
    return classify_instances(find_instances(predicted.astype(float), np.eye(4)), reference)


def _starts(candidates: Instances) -> list[tuple[int, ...]]:
    return [tuple(low for low, _ in r.bbox) for r in candidates]


def test_candidates_are_uncertain_components_apart_from_predictions(placed):
    found = find_candidates(placed["signal"], placed["predicted"], np.eye(4), level=0.2)
    typed = _typed(placed["predicted"], placed["reference"])
    candidates = classify_candidates(found, typed, placed["reference"])
    assert dict(zip(_starts(found), candidates.kinds, strict=True)) == {
        (2, 12, 12): "false_alarm",
        (10, 2, 2): "found_FN",
        (16, 7, 12): "false_alarm",
        (18, 15, 2): "other_lesion",
    }
    assert candidates.count("false_alarm") == 2
    fn_ids = [r.id for r in typed.of_kind("FN")]
    assert len(fn_ids) == 1 and candidates.found_fns == set(fn_ids)
    assert candidates.found_fn_ids[_starts(found).index((10, 2, 2))] == tuple(fn_ids)
    higher = find_candidates(placed["signal"], placed["predicted"], np.eye(4), level=0.25)
    assert (2, 12, 12) not in _starts(higher) and len(higher) == 3
    corner = find_candidates(
        placed["signal"], placed["predicted"], np.eye(4), level=0.2, connectivity=26
    )
    assert (16, 7, 12) not in _starts(corner) and len(corner) == 3


def test_candidate_arguments_are_checked(placed):
    signal, predicted = placed["signal"], placed["predicted"]
    with pytest.raises(ConfigurationError, match=r"signal must be a 3D map .* shape \(20, 20\)"):
        find_candidates(signal[0], predicted, np.eye(4), level=0.2)
    with pytest.raises(ConfigurationError, match=r"predicted mask has shape \(20, 20, 19\)"):
        find_candidates(signal, predicted[..., 1:], np.eye(4), level=0.2)
    with pytest.raises(ConfigurationError, match="level must be a finite number, got nan"):
        find_candidates(signal, predicted, np.eye(4), level=float("nan"))
    with pytest.raises(ConfigurationError, match="connectivity must be 6, 18 or 26, got 8"):
        find_candidates(signal, predicted, np.eye(4), level=0.2, connectivity=8)  # type: ignore[arg-type]
    found = find_candidates(signal, predicted, np.eye(4), level=0.2)
    typed = _typed(predicted, placed["reference"])
    with pytest.raises(ConfigurationError, match=r"reference have shape \(20, 20, 19\)"):
        classify_candidates(found, typed, placed["reference"][..., 1:])


DIM_MISSED, DIM_HEALTHY = 13.0, 12.0  # plain p ≈ 0.37 and 0.26 with PointwiseLinear (t = 0.5)


def _write_subject(root: Path, participant: str) -> None:
    brain = np.zeros(LINEAR_SHAPE, bool)
    brain[2:24, 2:14, 2:14] = True
    flair = np.where(brain, 10.0, 0.0).astype(np.float32)
    flair[4:7, 4:7, 4:7] = 40.0  # found by the model
    flair[16:18, 8:10, 8:10] = DIM_MISSED  # a lesion the model misses
    flair[10:12, 10:12, 4:6] = DIM_HEALTHY  # healthy, as uncertain
    t1w = np.where(brain, 10.0, 0.0).astype(np.float32)
    lesions = np.zeros(LINEAR_SHAPE, np.uint8)
    lesions[4:7, 4:7, 4:7] = 1
    lesions[16:18, 8:10, 8:10] = 1
    images = {
        root / participant / "anat" / f"{participant}_FLAIR.nii.gz": flair,
        root / participant / "anat" / f"{participant}_T1w.nii.gz": t1w,
        root
        / "derivatives"
        / "manual"
        / participant
        / "anat"
        / f"{participant}_desc-lesion_mask.nii.gz": lesions,
    }
    for path, data in images.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, LINEAR_AFFINE), path)


@pytest.fixture
def missed_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "missed"
    for participant in ("sub-01", "sub-02"):
        _write_subject(root, participant)
    return root


def test_runner_finds_the_missed_lesion_at_known_levels(
    tmp_path, missed_dataset, linear_model_path
):
    model = load_model(linear_model_path)
    out = tmp_path / "q3"
    calls: list[tuple[str, float, float]] = []
    result = run_uncertainty_experiment(
        missed_dataset,
        model,
        levels=(0.2, 0.3, 0.45),
        n_samples=2,
        max_explained=1,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    saliency = [call for call in calls if call[0].startswith("saliency of")]
    assert saliency
    for subject in {stage for stage, _, _ in saliency}:
        last = [(done, total) for stage, done, total in saliency if stage == subject][-1]
        assert last[0] == last[1] > 0  # every Jacobian row of the subject's domains counted
    curve = result.curve
    assert list(curve["n_FN_found"]) == [2, 2, 0]
    assert list(curve["false_alarms_per_subject"]) == [1.0, 0.0, 0.0]
    assert list(curve["sensitivity_before"]) == [0.5] * 3
    assert list(curve["sensitivity_after"]) == [1.0, 1.0, 0.5]
    table = result.candidates
    assert sorted(table["kind"]) == ["false_alarm"] * 2 + ["found_FN"] * 4
    np.testing.assert_allclose(table["volume_mm3"], 64.0)
    # a pointwise model commutes with flips: the TTA max is the plain probability
    np.testing.assert_allclose(table["max_probability"], table["plain_max_probability"], atol=1e-6)
    # its lesion-logit gradient is 1.5 for FLAIR everywhere, whatever the noise
    np.testing.assert_allclose(table["peak_FLAIR"], 1.5, rtol=1e-5)
    assert result.auc_peak == 0.5  # all ties
    assert result.auc_max_probability == 1.0  # 0.37 > 0.26
    assert result.n_FN == 2 and result.n_passes == 8
    write_experiment(result, out, uncertainty_figure(result))
    summary = json.loads((out / "uncertainty_summary.json").read_text())
    assert summary["levels"] == [0.2, 0.3, 0.45]
    assert summary["explained"]["auc_peak_FLAIR"] == 0.5
    assert summary == result.summary()
    written = pd.read_csv(out / "uncertainty_curve.tsv", sep="\t")
    assert list(written["n_FN_found"]) == [2, 2, 0]
    assert (out / "uncertainty.png").read_bytes()[:4] == b"\x89PNG"
    again = run_uncertainty_experiment(
        missed_dataset, model, levels=(0.2,), n_samples=1, max_subjects=1
    )
    assert again.n_subjects == 1
    with pytest.raises(OutputExistsError, match=r"uncertainty_candidates\.tsv: exists already"):
        write_experiment(again, out)
    write_experiment(again, out, overwrite=True)
    assert json.loads((out / "uncertainty_summary.json").read_text())["n_subjects"] == 1


def test_runner_arguments_are_checked(missed_dataset, linear_model_path):
    model = load_model(linear_model_path)
    assert default_levels("max", 0.4) == (0.1, 0.2, 0.4, 0.8)
    bad = {
        "method must be one of": {"method": "bagging"},
        "signal must be one of": {"signal": "median"},
        r"levels must be one or more finite numbers >= 0, got \[\]": {"levels": ()},
        r"levels must .* got \[-0.1\]": {"levels": (-0.1,)},
        "max_subjects must be >= 1, got 0": {"max_subjects": 0},
        "n_samples must be >= 1, got 0": {"n_samples": 0},
        "max_explained must be >= 0, got -1": {"max_explained": -1},
        "no dropout": {"method": "mc_dropout"},
        "no candidate domain at levels": {"levels": (0.99,)},
    }
    for message, arguments in bad.items():
        with pytest.raises(ConfigurationError, match=message):
            run_uncertainty_experiment(missed_dataset, model, **arguments)  # type: ignore[arg-type]


def test_cli_runs_the_uncertainty_experiment(tmp_path, missed_dataset, linear_model_path):
    out = tmp_path / "cli"
    arguments = ["experiment", "uncertainty", str(missed_dataset), "--out", str(out)]
    arguments += ["--model", str(linear_model_path), "--level", "0.2", "--n-samples", "1"]
    assert run_app(arguments) == 0
    assert pd.read_csv(out / "uncertainty_curve.tsv", sep="\t")["n_FN_found"].tolist() == [2]
    assert run_app(arguments) == 2  # refuses to overwrite
    assert run_app([*arguments, "--method", "mc_dropout", "--overwrite"]) == 2
