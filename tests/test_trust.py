"""``instasal.trust`` against oracles: skimage's SSIM, linear networks whose maps and deletion
curves are written down by hand, and radial profiles of a map built from explicit distances."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity
from torch import nn

from instasal.errors import ConfigurationError
from instasal.saliency import GradCamConfig, SmoothGradConfig
from instasal.trust import (
    SIGN_PLACES,
    ablation_agreement,
    baseline_values,
    channel_ablation,
    compare_with_null,
    deletion_insertion,
    layer_blocks,
    model_free_orders,
    neighbourhood,
    parameter_layers,
    radial_profile,
    randomisation,
    sign_rings,
    spearman_abs,
    spearman_signed,
    ssim,
    voxel_order,
)

NOISELESS = SmoothGradConfig(n_samples=1, noise_level=0.0)


def _cube(shape: tuple[int, int, int], low: int, high: int) -> np.ndarray:
    omega = np.zeros(shape, dtype=bool)
    omega[low:high, low:high, low:high] = True
    return omega


def _distances_to(omega: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Brute force: the smallest Euclidean distance (mm) from each voxel centre to Ω's centres."""
    grid = np.moveaxis(np.indices(omega.shape), 0, -1) * np.asarray(spacing)
    points = np.argwhere(omega) * np.asarray(spacing)
    return np.min(np.linalg.norm(grid[..., None, :] - points, axis=-1), axis=-1)


# --- similarity ---------------------------------------------------------------------------------


def test_ssim_equals_skimage_averaged_over_the_region() -> None:
    rng = np.random.default_rng(0)
    first = rng.normal(size=(2, 20, 18, 16))
    second = first + rng.normal(scale=0.7, size=first.shape)
    region = _cube((20, 18, 16), 7, 11)
    expected = []
    for a, b in zip(np.abs(first), np.abs(second), strict=True):
        _, local = structural_similarity(
            a / a.max(),
            b / b.max(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            full=True,
        )
        expected.append(local[region].mean())
    assert ssim(first, second, region) == pytest.approx(np.mean(expected), abs=1e-10)


def test_ssim_and_spearman_ignore_scale_and_see_a_reversed_ranking() -> None:
    rng = np.random.default_rng(1)
    first = rng.uniform(0.1, 1.0, size=(12, 12, 12))
    region = _cube((12, 12, 12), 3, 9)
    assert ssim(first, 4.0 * first, region) == pytest.approx(1.0, abs=1e-12)
    assert spearman_abs(first, 4.0 * first**3, region) == pytest.approx(1.0, abs=1e-12)
    assert spearman_abs(first, 1.0 / first, region) == pytest.approx(-1.0, abs=1e-12)


def test_neighbourhood_is_omega_dilated_in_mm_with_anisotropic_spacing() -> None:
    spacing = (1.0, 1.0, 2.5)
    omega = np.zeros((15, 15, 9), dtype=bool)
    omega[7, 7, 4] = True
    expected = _distances_to(omega, spacing) <= 5.0
    np.testing.assert_array_equal(neighbourhood(omega, spacing, 5.0), expected)


# --- model randomisation ------------------------------------------------------------------------


def _linear_chain() -> nn.Sequential:
    """Two 1×1×1 convolutions without bias: the noiseless map on Ω is ``(W2 W1)[1]`` per voxel."""
    generator = torch.Generator().manual_seed(5)
    convs = (nn.Conv3d(2, 3, 1, bias=False), nn.Conv3d(3, 2, 1, bias=False))
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
    return nn.Sequential(*convs).double()


def _scale_by_three(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            parameter.mul_(3.0)


def _zero(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            parameter.zero_()


def test_scaling_a_linear_layer_scales_the_map_by_the_known_factor() -> None:
    net = _linear_chain()
    x = torch.randn(2, 12, 12, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    omega = torch.from_numpy(_cube((12, 12, 12), 5, 7))
    result = randomisation(
        net, x, omega, spacing=(1, 1, 1), smoothgrad=NOISELESS, randomise=_scale_by_three
    )
    table = result.table
    # Cascading: last layer ×3, then both ×3 → ×9; independent: each alone ×3.
    expected = {("cascading", 1): 3.0, ("cascading", 2): 9.0}
    expected |= {("independent", 1): 3.0, ("independent", 2): 3.0}
    for (mode, step), factor in expected.items():
        for region in ("near", "window"):
            chosen = (table["mode"] == mode) & (table["step"] == step) & (table["region"] == region)
            (row,) = table[chosen].to_dict(orient="records")
            assert row["peak_ratio"] == pytest.approx(factor, rel=1e-12)
            for measure in ("spearman", "spearman_abs", "ssim"):
                assert row[measure] == pytest.approx(1.0, abs=1e-12)
                assert row[f"{measure}_null_max"] == pytest.approx(1.0, abs=1e-12)
                assert row[f"{measure}_null_at_ceiling"]
    assert not result.table["changed"].any()
    assert result.verdict("smoothgrad") == {"passes": False, "crossing_step": None}
    assert result.blocks == [("1",), ("0",)]


def test_a_vanishing_map_is_no_evidence_of_change() -> None:
    net = _linear_chain()
    x = torch.randn(2, 12, 12, 12, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    omega = torch.from_numpy(_cube((12, 12, 12), 5, 7))
    result = randomisation(
        net,
        x,
        omega,
        spacing=(1, 1, 1),
        smoothgrad=NOISELESS,
        randomise=_zero,
        modes=("cascading",),
    )
    assert (result.table["peak_ratio"] == 0).all()
    assert (result.table["ssim_null_max"] == 1).all()  # two all-zero maps are identical
    assert result.table["spearman_abs"].isna().all()  # no ranking to correlate
    assert result.verdict("smoothgrad") == {"passes": False, "crossing_step": None}


def test_the_null_compares_every_pair_and_the_trained_map_with_each_copy() -> None:
    rng = np.random.default_rng(2)
    region = np.ones((12, 12, 12), dtype=bool)
    omega = _cube((12, 12, 12), 5, 7)
    common = rng.normal(size=(12, 12, 12))
    copies = [common + rng.normal(scale=0.5, size=common.shape) for _ in range(3)]
    trained = rng.normal(size=common.shape)
    row = compare_with_null(trained, trained, copies, region, omega)
    pairs = [spearman_signed(a, b, region) for a, b in itertools.combinations(copies, 2)]
    against = [spearman_signed(c, trained, region) for c in copies]
    assert row["spearman_null_min"] == pytest.approx(min(pairs))
    assert row["spearman_null_max"] == pytest.approx(max(pairs))
    assert row["spearman"] == pytest.approx(np.median(against))
    assert row["spearman_ceiling"] == pytest.approx(1.0)
    assert not row["spearman_above_null"] and row["changed"]
    # the copies' common part as the trained map: closer to each copy than they are to each other
    above = compare_with_null(common, common, copies, region, omega)
    assert above["spearman_abs_above_null"] and above["ssim_above_null"] and not above["changed"]
    with pytest.raises(ConfigurationError, match="null needs"):
        compare_with_null(trained, trained, copies[:1], region, omega)


def test_randomisation_never_modifies_the_model_and_is_seeded() -> None:
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 2, 1)
    ).double()
    net.train()
    before = {name: value.clone() for name, value in net.state_dict().items()}
    x = torch.randn(2, 10, 10, 10, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    omega = torch.from_numpy(_cube((10, 10, 10), 4, 6))
    runs = [
        randomisation(
            net,
            x,
            omega,
            spacing=(1, 1, 1),
            smoothgrad=NOISELESS,
            gradcam=GradCamConfig("0"),
            steps=2,
            null_seeds=2,
        )
        for _ in range(2)
    ]
    assert net.training
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name
    pd.testing.assert_frame_equal(runs[0].table, runs[1].table)
    assert set(runs[0].table["method"]) == {"smoothgrad", "gradcam"}


def test_layers_follow_the_forward_pass_not_the_registration_order() -> None:
    class Backwards(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Conv3d(3, 2, 1)
            self.early = nn.Conv3d(2, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(self.early(x))

    assert parameter_layers(Backwards(), torch.zeros(1, 2, 4, 4, 4)) == ["early", "late"]
    assert layer_blocks(["a", "b", "c", "d", "e"], 2) == [("e", "d"), ("c", "b", "a")]
    with pytest.raises(ConfigurationError, match="steps"):
        layer_blocks(["a"], 0)


def test_a_torchscript_network_is_randomised_like_its_eager_original() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, 1))
    x = torch.randn(2, 6, 6, 6)
    omega = torch.zeros(6, 6, 6, dtype=torch.bool)
    omega[2:4, 2:4, 2:4] = True
    config = SmoothGradConfig(n_samples=2, seed=1)
    results = [
        randomisation(model, x, omega, spacing=(1, 1, 1), smoothgrad=config, seed=5, null_seeds=2)
        for model in (net, torch.jit.script(net))
    ]
    assert results[0].blocks == results[1].blocks == [("2",), ("0",)]
    # the same random weights and maps; float32 kernels may differ in summation order
    pd.testing.assert_frame_equal(results[0].table, results[1].table, atol=1e-5)


# --- deletion and insertion ---------------------------------------------------------------------

WEIGHT = np.array([1.5, -0.5])
SHAPE = (18, 18, 18)


def _pointwise() -> nn.Conv3d:
    """Lesion logit ``1.5·x₀ − 0.5·x₁`` per voxel, background logit 0."""
    net = nn.Conv3d(2, 2, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[1, :, 0, 0, 0] = torch.tensor(WEIGHT)
    return net


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def test_local_mean_baseline_is_the_tissue_mean_in_the_shell_beyond_the_neighbourhood() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(2.0, 1.0, size=(2, *SHAPE))
    x[:, :3] = 0.0  # background, not tissue
    omega = _cube(SHAPE, 8, 10)
    distance = _distances_to(omega, (1, 1, 1))
    shell = (distance > 5.0) & (distance <= 10.0) & np.any(x != 0, axis=0)
    base = baseline_values(x, omega, (1, 1, 1))
    np.testing.assert_allclose(base[:, 0, 0, 0], x[:, shell].mean(axis=1), rtol=1e-12)
    assert np.ptp(base, axis=(1, 2, 3)).max() == 0


def test_a_map_faithful_by_construction_gives_the_optimal_curves_and_beats_random() -> None:
    rng = np.random.default_rng(10)
    x = rng.normal(1.0, 1.0, size=(2, *SHAPE))
    omega = _cube(SHAPE, 7, 10)
    faithful = np.zeros((2, *SHAPE))
    faithful[:, omega] = WEIGHT[:, None]  # the model's own weights on Ω: its exact gradient map
    base = baseline_values(x, omega, (1, 1, 1))[:, 0, 0, 0]
    region = neighbourhood(omega, (1, 1, 1))
    # Only Ω's voxels move Ω's logits: replacing u lowers their sum by d_u = w·(x_u − b).
    drop = np.where(omega, np.tensordot(WEIGHT, x - base[:, None, None, None], axes=1), 0.0)
    result = deletion_insertion(
        _pointwise(),
        torch.from_numpy(x).float(),
        torch.from_numpy(omega),
        {"smoothgrad": faithful, "gradcam": -drop},  # a one-channel map ranking worst first
        spacing=(1, 1, 1),
        n_steps=10,
        n_random=3,
    )
    drops = np.sort(drop[region])[::-1]
    counts = np.linspace(0, drops.size, 11).round().astype(int)
    logit = np.tensordot(WEIGHT, x, axes=1)[omega]
    optimal_deletion = [(logit.sum() - drops[:k].sum()) / omega.sum() for k in counts]
    optimal_insertion = [(logit.sum() - drops[k:].sum()) / omega.sum() for k in counts]
    curves = result.curves[
        (result.curves["order"] == "smoothgrad_times_delta")
        & (result.curves["variant"] == "neighbourhood")
    ]
    deletion = curves[curves["kind"] == "deletion"]
    insertion = curves[curves["kind"] == "insertion"]
    np.testing.assert_allclose(deletion["logit_mean"], optimal_deletion, rtol=0, atol=1e-5)
    np.testing.assert_allclose(insertion["logit_mean"], optimal_insertion, rtol=0, atol=1e-5)
    # Probability at the end of deletion: every Ω voxel at the baseline.
    end = _sigmoid(np.full(omega.sum(), WEIGHT @ base)).mean()
    assert deletion["prob_mean"].iloc[-1] == pytest.approx(end, abs=1e-6)
    numbers = result.numbers
    others = result.curves[
        (result.curves["kind"] == "deletion") & (result.curves["variant"] == "neighbourhood")
    ]
    areas = [
        np.trapezoid(group["logit_mean"], group["fraction"])
        for _, group in others.groupby(["order", "seed"])
    ]
    # the optimal order's area is the smallest of all orders, model-free and random
    assert numbers["deletion_auc_smoothgrad_times_delta_logit"] == pytest.approx(min(areas))
    free = [numbers[f"deletion_auc_{order}_logit"] for order in ("brightness", "distance")]
    best = min([*free, numbers["deletion_auc_random_logit"]])
    assert numbers["deletion_auc_model_free_logit"] == pytest.approx(best, abs=1e-12)
    assert numbers["deletion_gain_smoothgrad_times_delta_logit"] == pytest.approx(
        best - numbers["deletion_auc_smoothgrad_times_delta_logit"], abs=1e-12
    )
    assert result.better_than_image["smoothgrad_times_delta"]
    # The reversed order loses to the model-free orders.
    assert numbers["deletion_gain_gradcam_logit"] < 0
    assert numbers["insertion_gain_gradcam_logit"] < 0
    assert not result.better_than_image["gradcam"]
    assert "gradcam_times_delta" not in result.better_than_image  # no channels: undefined
    # the outside variant never replaces Ω, whose voxels alone move this model's logits
    outside = result.curves[result.curves["variant"] == "outside"]
    assert np.ptp(outside["logit_mean"]) < 1e-5


def test_model_free_orders_rank_brightest_and_nearest_first() -> None:
    x = np.zeros((2, 5, 1, 1))
    x[0, :, 0, 0] = [0.0, 3.0, 1.0, 2.0, 0.5]
    omega = np.zeros((5, 1, 1), dtype=bool)
    omega[4] = True
    scores = model_free_orders(x, omega, (2.0, 1.0, 1.0))
    region = np.ones((5, 1, 1), dtype=bool)
    tie_break = np.arange(5)
    assert list(voxel_order(scores["brightness"], region, tie_break)) == [1, 3, 2, 4, 0]
    assert list(voxel_order(scores["distance"], region, tie_break)) == [4, 3, 2, 1, 0]
    np.testing.assert_allclose(scores["distance"].ravel(), [-8.0, -6.0, -4.0, -2.0, 0.0])


def test_deletion_rejects_a_map_of_the_wrong_shape() -> None:
    omega = _cube(SHAPE, 7, 10)
    with pytest.raises(ConfigurationError, match="map 'smoothgrad'"):
        deletion_insertion(
            _pointwise(),
            torch.ones(2, *SHAPE),
            torch.from_numpy(omega),
            {"smoothgrad": np.zeros((2, 4, 4, 4))},
            spacing=(1, 1, 1),
        )


def test_ablation_of_a_linear_model_drops_the_logit_by_the_weighted_difference() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(1.0, 0.5, size=(2, *SHAPE))
    omega = _cube(SHAPE, 7, 10)
    table = channel_ablation(
        _pointwise(), torch.from_numpy(x).float(), torch.from_numpy(omega), spacing=(1, 1, 1)
    )
    shell = baseline_values(x, omega, (1, 1, 1))[:, 0, 0, 0]
    normal = ~neighbourhood(omega, (1, 1, 1))
    fills = {"tissue_mean": x[:, normal].mean(axis=1), "shell_mean": shell}
    for row in table.to_dict(orient="records"):
        k = int(str(row["channel"]).removeprefix("channel_"))
        value = fills[str(row["fill"])][k]
        assert row["value"] == pytest.approx(value, rel=1e-6)  # the input is float32
        # only Ω's own voxels move Ω's logits: the drop is w_k · mean over Ω of (x_k − value)
        expected = WEIGHT[k] * (x[k, omega] - value).mean()
        assert row["drop"] == pytest.approx(expected, abs=1e-5)
    drops = table[table["fill"] == "shell_mean"]["drop"].to_numpy()
    shares = table[table["fill"] == "shell_mean"]["share"].to_numpy()
    np.testing.assert_allclose(shares, drops / np.abs(drops).sum(), rtol=1e-12)


def test_ablation_agreement_counts_matching_top_channels() -> None:
    lesions = pd.DataFrame(
        {
            "reliance_FLAIR": [0.9, 0.8, 0.3, 0.6],
            "reliance_T1w": [0.1, 0.2, 0.7, 0.4],
            "ablation_share_FLAIR": [0.7, 0.6, 0.8, np.nan],
            "ablation_share_T1w": [0.3, 0.4, 0.2, 0.5],
        }
    )
    found = ablation_agreement(lesions, ["FLAIR", "T1w"])
    assert found["n_lesions"] == 3  # the lesion without an ablation share left out
    assert found["same_top_channel"] == pytest.approx(2 / 3)
    assert found["spearman"] == pytest.approx(-0.5)


# --- radial profile -----------------------------------------------------------------------------


def test_radial_profile_shell_means_of_a_distance_map_with_anisotropic_spacing() -> None:
    spacing = (1.0, 1.0, 2.5)
    omega = np.zeros((25, 25, 11), dtype=bool)
    omega[12, 12, 5] = True
    distance = _distances_to(omega, spacing)
    saliency = np.stack([distance, -2.0 * distance + 1.0])
    profile = radial_profile(saliency, omega, spacing, channel_names=["FLAIR", "T1w"])
    width = 2.5  # the largest voxel size
    assert list(profile.columns) == ["shell", "inner_mm", "outer_mm", "n_voxels", "channel", "mean"]
    flair = profile[profile["channel"] == "FLAIR"].reset_index(drop=True)
    assert list(flair["outer_mm"]) == [0.0, 2.5, 5.0, 7.5, 10.0]
    for row in flair.to_dict("records"):
        inner, outer = (row["shell"] - 1) * width, row["shell"] * width
        members = omega if row["shell"] == 0 else ~omega & (distance > inner) & (distance <= outer)
        assert row["n_voxels"] == members.sum()
        assert row["mean"] == pytest.approx(distance[members].mean(), abs=1e-9)
    t1w = profile[profile["channel"] == "T1w"]["mean"].to_numpy()
    np.testing.assert_allclose(t1w, -2.0 * flair["mean"].to_numpy() + 1.0, atol=1e-9)


def test_sign_rings_are_fixed_in_mm_and_scaled_by_the_largest_magnitude_within_8_mm() -> None:
    omega = np.zeros((20, 16, 24), bool)
    omega[9:11, 7:9, 11:13] = True
    spacing = (1.0, 1.5, 0.8)
    distance = ndimage.distance_transform_edt(~omega, sampling=spacing)
    first = np.where(omega, 3.0, np.cos(distance))  # largest |value| within 8 mm: Ω's 3.0
    first[distance > 8] = 50.0  # beyond the rings: neither in a ring nor in the scale
    rings = sign_rings(np.stack([first, 100 * first]), omega, spacing)  # channel 0 only
    assert list(rings) == ["inside", *SIGN_PLACES]
    assert rings["inside"] == pytest.approx(1.0, abs=1e-12)
    for place, (inner, outer) in zip(SIGN_PLACES, [(0, 2), (2, 4), (4, 6), (6, 8)], strict=True):
        members = ~omega & (distance > inner) & (distance <= outer)
        expected = np.cos(distance[members]).mean() / 3.0
        assert rings[place] == pytest.approx(expected, abs=1e-12)
    assert all(np.isnan(v) for v in sign_rings(np.zeros(omega.shape), omega, spacing).values())
