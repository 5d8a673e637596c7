"""nnU-Net's deployed forward (instasal.models.nnunet_deployed) against nnU-Net and autograd.

Oracles: nnU-Net's own resampling function on the same arrays; finite differences through the
spline resampling; the probabilities ``nnUNetv2_predict`` wrote (one fold, mirrored or not, and
two folds averaged); autograd through the whole forward, all tiles in one graph.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from instasal.errors import ConfigurationError
from instasal.io import Subject, read_subject
from instasal.models import card_of, load_model
from instasal.models.nnunet_deployed import (
    nnunet_deployed_forward,
    nnunet_resampling,
    with_nnunet_deployed,
)
from instasal.models.nnunet_predict import predict_nnunet
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.prepare import PreparedSubject, prepare_subject
from instasal.saliency import ExplainedPass, SmoothGradConfig, instance_smoothgrad_many
from instasal.saliency.deployed import Tiling, deployed_forward
from nnunet_artefacts import (
    FLOAT16_PROBABILITY,
    nnunet_probability,
    run_nnunet_predict,
    subject_files,
    write_case,
)

nnunetv2 = pytest.importorskip("nnunetv2")

# nnU-Net resamples in float64 and stores float32: 2**-24 relative on values below 10
FLOAT32_STORAGE = 2e-6
RESAMPLING_CASES = {
    # (shape, spacing in, spacing out, nnU-Net's resampling arguments)
    "spline": ((20, 23, 17), (1.5, 2.0, 2.5), (2.0, 2.0, 2.0), 3),
    "separate_z": ((9, 30, 28), (4.0, 1.0, 1.0), (2.0, 1.1, 0.9), 3),
    "linear": ((12, 14, 16), (2.0, 2.0, 2.0), (1.3, 1.7, 2.6), 1),
}


def _arguments(order: int) -> dict[str, object]:
    return {"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None}


def _volume(shape: tuple[int, ...], seed: int, zero_border: bool = True) -> np.ndarray:
    """Two channels with one bright voxel (spline overshoot to clip), and a zero border (where
    the clip's range is degenerate: not differentiable there)."""
    data = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    if zero_border:
        data[:, :3] = 0.0
    data[0, 5, 5, 5] = 8.0
    return data


@pytest.mark.parametrize("case", list(RESAMPLING_CASES))
def test_resampling_is_nnunets_own(case: str) -> None:
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        resample_data_or_seg_to_shape,
    )

    shape, spacing_in, spacing_out, order = RESAMPLING_CASES[case]
    data = _volume(shape, 0)
    new_shape = tuple(int(n) for n in compute_new_shape(shape, spacing_in, spacing_out))
    theirs = resample_data_or_seg_to_shape(
        data, new_shape, spacing_in, spacing_out, **_arguments(order)
    )
    operator = nnunet_resampling(shape, new_shape, spacing_in, spacing_out, _arguments(order))
    ours = operator(torch.from_numpy(data)[None].double())[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=FLOAT32_STORAGE)
    # the anisotropic case goes nnU-Net's separate-z way (nearest across slices), and there
    # skimage's clip to each slice's range changes voxels: a purely linear operator would not do
    assert (operator.second[0] is not None) == (case == "separate_z")
    unclipped = dataclasses.replace(operator, clip_dims=())(torch.from_numpy(data)[None].double())
    clipped_away = float(np.abs(unclipped[0].numpy() - theirs).max())
    assert (clipped_away > 1e-3) == (case == "separate_z")


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv3d(2, 3, 3, padding=1).double()
        self.second = nn.Conv3d(3, 1, 3, padding=1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


@pytest.mark.parametrize("case", ["spline", "separate_z"])
def test_spline_resampling_gradient_matches_finite_differences(case: str) -> None:
    """Central differences of a tiny network after the resampling, along random directions."""
    shape, spacing_in, spacing_out, order = RESAMPLING_CASES[case]
    operator = nnunet_resampling(
        shape,
        tuple(round(n * s / t) for n, s, t in zip(shape, spacing_in, spacing_out, strict=True)),
        spacing_in,
        spacing_out,
        _arguments(order),
    )
    net = _TinyNet()
    x = torch.from_numpy(_volume(shape, 1, zero_border=False)).double()[None]
    x.requires_grad_(True)

    def f(value: torch.Tensor) -> torch.Tensor:
        return net(operator(value)).pow(2).mean()

    (gradient,) = torch.autograd.grad(f(x), x)
    step = 1e-5
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            difference = (f(x + step * direction) - f(x - step * direction)) / (2 * step)
        # central differences of a smooth function: O(step**2) error, far below 1e-7 here
        torch.testing.assert_close((gradient * direction).sum(), difference, rtol=1e-6, atol=1e-10)


# --- against nnU-Net's own predictions, on folders nnU-Net trained --------------------------


@pytest.fixture(scope="module")
def tiled_subject(trained_folder: Path) -> Path:
    """An anisotropic subject (1.2 × 1 × 4 mm: nnU-Net's separate-z path) that nnU-Net covers
    with 8 overlapping tiles, its brain inside a zero border (cropped away)."""
    folder = trained_folder.parents[2] / "tiled_input"
    folder.mkdir(exist_ok=True)
    shape = (40, 56, 20)
    brain = np.zeros(shape, bool)
    brain[3:-4, 5:-3, 1:-2] = True
    lesion = np.zeros(shape, bool)
    lesion[14:22, 20:30, 5:8] = True
    write_case(folder, brain, lesion, np.diag([1.2, 1.0, 4.0, 1.0]), seed=11)
    return folder


@pytest.fixture(scope="module")
def tiled_written(trained_folder: Path, tiled_subject: Path) -> dict[bool, tuple[Path, Path]]:
    """nnUNetv2_predict --disable_tta on the tiled subject (mirroring is per tile, before the
    blend: the flipped subject's case covers it)."""
    return {False: run_nnunet_predict(trained_folder.parents[2], tiled_subject, ["all"], False)}


def _deployed_probability(prepared: PreparedSubject, tta: bool) -> tuple[np.ndarray, float]:
    """Target probability of the deployed forward on the stored grid, and how far float16
    rounding flips can move it (``_float16_flip_bound``)."""
    forward = nnunet_deployed_forward(prepared, tta)
    with torch.no_grad():
        logits = forward.logits(prepared.x[None], range(len(forward.tiling.boxes)))[0]
    probability = np.asarray(prepared.to_native(torch.softmax(logits, 0)[1].numpy()))
    return probability, _float16_flip_bound(logits, forward.tiling)


def _float16_flip_bound(logits: torch.Tensor, tiling: Tiling) -> float:
    """nnU-Net sums each tile's weighted logits and weights in float16 and divides in float16: a
    logit passes ``k + 1`` roundings and its weight ``k``, ``k`` the tiles over a voxel. Inputs
    that differ at float32 round-off (ours and nnU-Net's resampled images) can round to the
    neighbouring float16 value at any of them, a relative change of 2**-10 each; a two-class
    probability moves by at most a quarter of the change of the two logits."""
    overlap = torch.zeros(tiling.padded, dtype=torch.int32)
    for box in tiling.boxes:
        overlap[box] += 1
    relative = (2 * int(overlap.max()) + 1) * 2.0**-10
    return 0.25 * 2 * relative * float(logits.abs().max())


def _assert_nnunet_probability(ours: np.ndarray, theirs: np.ndarray, flip_bound: float) -> None:
    """Equal to float32 round-off but where a float16 sum rounded the other way."""
    difference = np.abs(ours - theirs)
    # float32 network sums and nnU-Net's float64 export resampling (measured 2.4e-4): all but
    # the few voxels whose float16 sums flipped (seen: 7 of 44,800)
    assert np.quantile(difference, 0.999) <= FLOAT16_PROBABILITY
    assert difference.max() <= flip_bound


@pytest.mark.slow
@pytest.mark.parametrize(
    ("which", "tta"),
    [("flipped", True), ("flipped", False), ("tiled", False)],
    ids=["flipped-mirrored", "flipped-disable_tta", "tiled-disable_tta"],
)
def test_deployed_probability_is_nnunetv2_predicts(
    trained_folder: Path,
    flipped_subject: Path,
    nnunet_written: dict[bool, tuple[Path, Path]],
    tiled_subject: Path,
    tiled_written: dict[bool, tuple[Path, Path]],
    tta: bool,
    which: str,
) -> None:
    folder, written = (
        (flipped_subject, nnunet_written) if which == "flipped" else (tiled_subject, tiled_written)
    )
    model = load_model(trained_folder / "fold_all")
    with pytest.warns(match="resampled"):
        prepared = prepare_subject(read_subject(subject_files(folder)), model)
    theirs, _ = nnunet_probability(written[tta])
    ours, flip_bound = _deployed_probability(prepared, tta)
    _assert_nnunet_probability(ours, theirs, flip_bound)
    if which == "tiled":
        assert len(nnunet_deployed_forward(prepared, tta).tiling.boxes) == 8


@pytest.mark.slow
def test_two_folds_are_predicted_and_explained_as_nnunet_averages_them(
    trained_folder: Path, flipped_subject: Path, two_folds_written: tuple[Path, Path]
) -> None:
    ensemble = load_model(trained_folder)
    assert card_of(ensemble).hyperparameters["fold"] == "fold_0+fold_1"
    subject = read_subject(subject_files(flipped_subject))
    theirs, _ = nnunet_probability(two_folds_written)
    np.testing.assert_allclose(
        predict_nnunet(ensemble, subject), theirs, rtol=0, atol=FLOAT16_PROBABILITY
    )
    with pytest.warns(match="resampled"):
        prepared = prepare_subject(subject, ensemble)
    ours, flip_bound = _deployed_probability(prepared, True)
    _assert_nnunet_probability(ours, theirs, flip_bound)
    for fold in ("fold_0", "fold_1"):  # the average is neither fold's prediction
        single = predict_nnunet(load_model(trained_folder / fold), subject)
        assert np.abs(single - theirs).max() > 20 * FLOAT16_PROBABILITY


@pytest.mark.slow
def test_map_is_autograd_through_the_whole_nnunet_forward(
    trained_folder: Path, tiled_subject: Path
) -> None:
    """The deployed map (rows grouped by the tiles each voxel depends on) against one autograd
    row per voxel through the whole forward: crop, spline resampling, all 8 tiles, export."""
    model = load_model(trained_folder / "fold_all")
    with pytest.warns(match="resampled"):
        prepared = prepare_subject(read_subject(subject_files(tiled_subject)), model)
    stating = with_nnunet_deployed(prepared, tta=False)
    forward = deployed_forward(stating.network, prepared.x.shape[1:], None)
    domain = torch.zeros(prepared.x.shape[1:], dtype=torch.bool)
    domain[15:17, 24:26, 6] = True  # between tiles: its voxels depend on several
    domain[2, 2, 2] = True  # outside nnU-Net's crop box: a constant, its row zero
    assert len(forward.cells(domain)) > 1
    config = SmoothGradConfig(noise_level=0.0, engine="naive")
    explained = ExplainedPass(target=1, context="deployed")
    got = instance_smoothgrad_many(stating.network, prepared.x, {1: domain}, config, explained)[1]
    leaf = prepared.x[None].clone().requires_grad_(True)
    logits = forward.logits(leaf, range(len(forward.tiling.boxes)))[0, 1]
    expected: torch.Tensor | None = None
    for voxel in domain.nonzero().tolist():
        row = torch.autograd.grad(logits[tuple(voxel)], leaf, retain_graph=True)[0][0]
        if expected is None:
            expected = row
        expected = torch.where(row.abs() > expected.abs(), row, expected)
    assert expected is not None
    peak = float(expected.abs().max())
    assert peak > 0
    # float32 sums over a few thousand products: 1e-5 of the peak
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * peak)


@pytest.mark.slow
def test_what_cannot_be_nnunets_forward_is_refused(trained_folder: Path) -> None:
    """Not a silent stand-in: without nnU-Net's forward stated on the subject, MONAI's sliding
    window is refused; a subject without a non-zero voxel has no crop box, said in one line."""
    model = load_model(trained_folder / "fold_all")
    with pytest.raises(ConfigurationError, match=r"nnU-Net's own predictor.*with_deployed_forward"):
        deployed_forward(model, (16, 20, 24), None)
    zeros = Subject(np.zeros((2, 16, 20, 24), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ConfigurationError, match=r"^subject: every voxel is 0; nnU-Net has no"):
        nnunet_deployed_forward(prepare_subject(zeros, model), tta=False)


@pytest.mark.slow
def test_explain_defaults_to_nnunets_deployed_forward(
    trained_folder: Path,
    flipped_subject: Path,
    nnunet_written: dict[bool, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    """Fails if an nnU-Net folder falls back to the patch (or full) context: the run's context
    is deployed and the explained probability over Ω is the prediction's to float16 round-off."""
    theirs, _ = nnunet_probability(nnunet_written[False])
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1),
        gradcam=None,
        n_true_negatives=0,
        max_lesions=1,
        threshold=min(0.85, float(theirs.max()) - 0.05),
        tta=False,
    )
    result = explain_subject(
        subject_files(flipped_subject), trained_folder / "fold_all", tmp_path, settings=settings
    )
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["resolved"]["context"] == "deployed"
    assert not any("patch" in note for note in result.notes)
    row = result.table.iloc[0]
    assert abs(row["explained_prob_mean"] - row["prob_mean"]) <= FLOAT16_PROBABILITY
    assert abs(row["explained_prob_max"] - row["prob_max"]) <= FLOAT16_PROBABILITY
    assert bool(row["explained_detects"])
