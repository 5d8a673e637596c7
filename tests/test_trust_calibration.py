"""The trust checks on cases whose answer is known, and on a check broken on purpose.

Networks are built by hand so that the lesion logit depends only on T1w, only on a ring 2–6 mm
around the lesion, or on a fixed filter with nothing learned before it; two map "methods" ignore
the model altogether (the input itself, a distance map). A check that cannot tell these apart
(docs/trust.md, "Calibration") is not a check.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from instasal.analyses.statistics import ALPHA
from instasal.analyses.trust_summary import negative_neighbourhood
from instasal.saliency import SmoothGradConfig
from instasal.trust import (
    SIGN_PLACES,
    VARIANTS,
    FaithfulnessResult,
    MapMethod,
    channel_ablation,
    deletion_insertion,
    randomisation,
)

NOISELESS = SmoothGradConfig(n_samples=1, noise_level=0.0)
SHAPE = (16, 16, 16)
CENTRE = (8, 8, 8)


def _distance_from(omega: np.ndarray) -> np.ndarray:
    return np.asarray(ndimage.distance_transform_edt(~omega))


def _single_voxel() -> np.ndarray:
    omega = np.zeros(SHAPE, dtype=bool)
    omega[CENTRE] = True
    return omega


def _image(omega: np.ndarray) -> torch.Tensor:
    """FLAIR and T1w: tissue at 1 with texture; the lesion brightest on FLAIR (+3), its first
    2 mm brighter (+2) than the ring at 2–5 mm (+1); T1w darker in the lesion (−1)."""
    rng = np.random.default_rng(3)
    x = 1.0 + rng.normal(scale=0.1, size=(2, *SHAPE))
    distance = _distance_from(omega)
    x[0] += np.select([omega, distance <= 2, distance <= 5], [3.0, 2.0, 1.0], 0.0)
    x[1, omega] -= 1.0
    return torch.from_numpy(x).float()


class CircularFilter(nn.Module):
    """``y(u) = Σ_v k(u − v) x(v)`` over the periodic grid (an FFT convolution: a 13³
    convolution costs the tests seconds), with the kernel ``k`` a parameter."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.kernel = nn.Parameter(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = (-3, -2, -1)
        product = torch.fft.rfftn(x, dim=axes) * torch.fft.rfftn(self.kernel, dim=axes)
        return torch.fft.irfftn(product, s=x.shape[-3:], dim=axes)


class Head(nn.Module):
    """Background and lesion logits as two learned multiples of one feature map (a 1×1×1
    convolution without bias; ``torch.conv3d`` is slow at this size on a CPU)."""

    def __init__(self, weight: tuple[float, float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return feature * self.weight.view(1, 2, 1, 1, 1)


def _radius() -> np.ndarray:
    """Each voxel's distance (mm) from the grid's centre voxel."""
    offsets = np.indices(SHAPE) - np.asarray(CENTRE)[:, None, None, None]
    return np.asarray(np.sqrt((offsets**2).sum(axis=0)))


def _ring_weights(seed: int) -> np.ndarray:
    """Uneven positive weights (0.5–1.5) at 2 < d ≤ 6 mm from the centre, summing to 1."""
    radius = _radius()
    ring = (radius > 2) & (radius <= 6)
    weights = np.where(ring, np.random.default_rng(seed).uniform(0.5, 1.5, ring.shape), 0.0)
    return np.asarray(weights / weights.sum())


def _centred_at_origin(kernel: np.ndarray) -> torch.Tensor:
    """A kernel written around the centre voxel, moved to the FFT's origin."""
    return torch.from_numpy(np.roll(kernel, [-c for c in CENTRE], axis=(0, 1, 2))).float()


class RingNetwork(nn.Module):
    """Lesion logit at u: a positive, spatially uneven weighting of FLAIR at 2 < d ≤ 6 mm from u
    (T1w is never read), then a head."""

    def __init__(self) -> None:
        super().__init__()
        kernel = _centred_at_origin(_ring_weights(4))
        self.ring = CircularFilter(kernel)
        self.head = Head((0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ring(x[:, :1]))


def _t1w_network() -> nn.Sequential:
    """Two convolutions with a smooth non-linearity; the first reads T1w only."""
    torch.manual_seed(5)
    first, second = nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 2, 3, padding=1)
    with torch.no_grad():
        first.weight[:, 0] = 0.0
    return nn.Sequential(first, nn.Softplus(), second)


class FixedFilter(nn.Module):
    """Lesion logit = a · (Gaussian blur of FLAIR): the filter is a buffer, nothing learned; the
    only parameters, the head's, scale it (and may flip its sign when randomised)."""

    kernel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        grid = np.indices((5, 5, 5)) - 2
        kernel = np.exp(-(grid**2).sum(axis=0) / 2.0)
        self.register_buffer("kernel", torch.from_numpy(kernel / kernel.sum()).float()[None, None])
        self.head = Head((-1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.conv3d(x[:, :1], self.kernel, padding=2))


def _input_itself(
    model: nn.Module, x: torch.Tensor, omega: torch.Tensor, seed: int
) -> torch.Tensor:
    return x.detach().clone()


def _distance_map(model: nn.Module, x: torch.Tensor, omega: torch.Tensor, seed: int) -> np.ndarray:
    return np.exp(-_distance_from(omega.numpy()) / 2.0)


MODEL_FREE_MAPS: dict[str, MapMethod] = {"input": _input_itself, "distance_map": _distance_map}


def _verdicts(model: nn.Module, **options: object) -> dict[str, bool]:
    omega = _single_voxel()
    result = randomisation(
        model,
        _image(omega),
        torch.from_numpy(omega),
        spacing=(1, 1, 1),
        smoothgrad=NOISELESS,
        methods=MODEL_FREE_MAPS,
        modes=("cascading",),
        **options,  # type: ignore[arg-type]
    )
    return {method: result.verdict(method)["passes"] for method in ("smoothgrad", *MODEL_FREE_MAPS)}


# --- randomisation ------------------------------------------------------------------------------


def test_randomisation_passes_maps_of_learned_dependence_and_fails_maps_that_ignore_the_model():
    for model in (RingNetwork(), _t1w_network()):
        assert _verdicts(model) == {"smoothgrad": True, "input": False, "distance_map": False}


def test_randomisation_fails_a_map_of_a_fixed_filter_with_nothing_learned() -> None:
    assert _verdicts(FixedFilter())["smoothgrad"] is False


def test_randomisation_fails_when_the_randomisation_is_broken() -> None:
    def keep(module: nn.Module, generator: torch.Generator) -> None:
        """A broken randomiser: the weights stay trained."""

    assert _verdicts(_t1w_network(), randomise=keep)["smoothgrad"] is False


def test_the_null_and_the_ceiling_explain_the_verdicts() -> None:
    omega = _single_voxel()
    result = randomisation(
        RingNetwork(),
        _image(omega),
        torch.from_numpy(omega),
        spacing=(1, 1, 1),
        smoothgrad=NOISELESS,
        methods=MODEL_FREE_MAPS,
        modes=("cascading",),
    )
    table = result.table
    last = table[(table["step"] == len(result.blocks)) & (table["region"] == "near")]
    rows = last.set_index("method")
    for method in MODEL_FREE_MAPS:  # identical maps: null, ceiling and trained all at 1
        row = rows.loc[method]
        assert row["ssim"] == pytest.approx(1.0) and row["ssim_null_max"] == pytest.approx(1.0)
        assert row["ssim_null_at_ceiling"] and row["spearman_abs_null_at_ceiling"]
    row = rows.loc["smoothgrad"]
    assert row["ssim_ceiling"] == pytest.approx(1.0)  # noiseless: the repeat is the same map
    assert not row["ssim_above_null"] and row["ssim_null_max"] < 1.0
    assert row["omega_mean_trained"] == pytest.approx(0.0, abs=1e-6)  # zero on the lesion


# --- deletion and insertion ---------------------------------------------------------------------


def _cube() -> np.ndarray:
    omega = np.zeros(SHAPE, dtype=bool)
    omega[7:10, 7:10, 7:10] = True
    return omega


def _local_network() -> nn.Conv3d:
    """Lesion logit at u: a positive 3×3×3 weighting of FLAIR around u (a bright-blob detector)."""
    conv = nn.Conv3d(2, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0] = 1.0 / 27
    return conv


def _faithfulness(
    model: nn.Module, omega: np.ndarray, maps: Mapping[str, MapMethod]
) -> FaithfulnessResult:
    """Deletion and insertion with each map computed as ``randomisation`` computes it."""
    x = _image(omega)
    tensor = torch.from_numpy(omega)
    arrays = {name: method(model, x, tensor, 0) for name, method in maps.items()}
    return deletion_insertion(model, x, tensor, arrays, spacing=(1, 1, 1), batch_size=32)


def _gradient(model: nn.Module, x: torch.Tensor, omega: torch.Tensor, seed: int) -> torch.Tensor:
    """The exact map of a linear network: the gradient of the lesion logit summed over Ω."""
    leaf = x.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf[None])[0, 1][omega].sum(), leaf)
    return gradient


def test_a_map_of_the_ring_the_model_reads_beats_the_image_and_model_free_maps_do_not() -> None:
    maps: dict[str, MapMethod] = {"smoothgrad": _gradient, "input": _input_itself}
    verdicts = _faithfulness(RingNetwork(), _single_voxel(), maps).better_than_image
    assert verdicts["smoothgrad"] and verdicts["smoothgrad_times_delta"]
    assert verdicts["smoothgrad_outside"] and verdicts["smoothgrad_times_delta_outside"]
    ignoring = {k: v for k, v in verdicts.items() if not k.startswith("smoothgrad")}
    assert set(ignoring) == {
        f"{order}{variant}" for order in ("input", "input_times_delta") for variant in VARIANTS
    }
    assert not any(ignoring.values())


def test_the_input_as_a_map_beats_random_orders_but_not_the_image() -> None:
    """The rule the model-free orders replaced (better than random) calls the input faithful."""
    model, omega = _local_network(), _cube()
    result = _faithfulness(model, omega, MODEL_FREE_MAPS)
    numbers = result.numbers
    for kind, sign in (("deletion", 1), ("insertion", -1)):
        versus_random = sign * (
            numbers[f"{kind}_auc_random_logit"] - numbers[f"{kind}_auc_input_logit"]
        )
        assert versus_random > numbers[f"{kind}_auc_random_sd_logit"]
    assert not any(result.better_than_image.values())
    # the distance map ranks as the distance order does: never better than it
    for name in ("deletion_gain_distance_map_logit", "insertion_gain_distance_map_logit"):
        assert numbers[name] <= 0


# --- channel ablation ---------------------------------------------------------------------------


def test_ablation_finds_the_only_channel_each_network_reads() -> None:
    omega = _single_voxel()
    x, tensor = _image(omega), torch.from_numpy(omega)
    for model, used, unused in ((RingNetwork(), "FLAIR", "T1w"), (_t1w_network(), "T1w", "FLAIR")):
        table = channel_ablation(
            model, x, tensor, spacing=(1, 1, 1), channel_names=["FLAIR", "T1w"]
        )
        rows = {(row["fill"], row["channel"]): row for row in table.to_dict(orient="records")}
        for fill in ("tissue_mean", "shell_mean"):
            assert rows[(fill, unused)]["drop"] == pytest.approx(0.0, abs=1e-6)
            assert abs(float(rows[(fill, used)]["drop"])) > 1e-3
            assert abs(float(rows[(fill, used)]["share"])) == pytest.approx(1.0, abs=1e-5)


class CentreSurround(nn.Module):
    """Lesion logit at u: a little of FLAIR at u minus a positive, uneven weighting of FLAIR at
    2 < d ≤ 6 mm (a learned kernel): the map of a one-voxel Ω is negative in the 2–4 and 4–6 mm
    rings by construction, and zero in the others. Weights beyond 8 mm bring the kernel's mean to
    0, so that randomised copies (normal draws with the kernel's mean and SD) have no offset of
    their own (with a negative mean every copy's map is negative everywhere: ``docs/trust.md``)."""

    def __init__(self) -> None:
        super().__init__()
        kernel = -_ring_weights(6)
        kernel[CENTRE] = 0.01
        far = _radius() > 8
        kernel[far] = -kernel.sum() / far.sum()
        self.filter = CircularFilter(_centred_at_origin(kernel))
        self.head = Head((0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.filter(x[:, :1]))


def _sign_verdict(model: nn.Module, **options: object) -> dict[str, Any]:
    """The cohort sign-pattern verdict over 12 'subjects' (one lesion each; the random weights
    seeded per subject, as independent subjects would give independent copies)."""
    omega = _single_voxel()
    rows = []
    for subject in range(12):
        result = randomisation(
            model,
            _image(omega),
            omega,
            spacing=(1, 1, 1),
            smoothgrad=NOISELESS,
            steps=2,
            modes=("cascading",),
            seed=subject,
            **options,  # type: ignore[arg-type]
        )
        rows.append({"subject": f"s{subject}", "type": "TP"} | result.ring_columns("smoothgrad"))
    return negative_neighbourhood(pd.DataFrame(rows))


def test_sign_rule_finds_a_learned_negative_surround_and_only_that() -> None:
    found = _sign_verdict(CentreSurround())
    assert found["verdict"] == "reproduced"
    rings = {ring["place"]: ring for ring in found["rings"]}
    assert rings["ring_2_4mm"]["trained"]["estimate"] < 0
    assert rings["ring_2_4mm"]["p_holm"] < ALPHA
    assert rings["ring_6_8mm"]["trained"]["estimate"] == pytest.approx(0.0, abs=1e-6)
    # a surround the model reads with positive weights is no negative neighbourhood
    assert _sign_verdict(RingNetwork())["verdict"] == "not reproduced"


def test_sign_rule_fails_when_the_null_is_broken() -> None:
    def keep(module: nn.Module, generator: torch.Generator) -> None:
        """A 'randomiser' that changes nothing: every copy is the trained network."""

    found = _sign_verdict(CentreSurround(), randomise=keep)
    assert found["verdict"] == "not reproduced"
    rings = {ring["place"]: ring for ring in found["rings"]}
    assert rings["ring_2_4mm"]["sign_test_trained"]["p_value"] < ALPHA  # negative, but
    assert rings["ring_2_4mm"]["sign_test_difference"]["n"] == 0  # no different from the null


def test_sign_rule_says_when_too_few_subjects_could_reach_the_level() -> None:
    table = pd.DataFrame(
        {"subject": [f"s{k}" for k in range(5)], "type": "TP"}
        | {f"sign_{p}_smoothgrad": -0.5 for p in SIGN_PLACES}
        | {f"sign_{p}_smoothgrad_random": 0.1 for p in SIGN_PLACES}
    )
    found = negative_neighbourhood(table)
    assert found["verdict"] == "not testable at this n"
    assert "12 or more subjects" in found["note"]
    assert (
        negative_neighbourhood(table.drop(columns="sign_ring_0_2mm_smoothgrad"))["verdict"]
        == "not testable"
    )
