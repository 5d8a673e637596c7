"""explain_subject's default explains the prediction itself: the deployed context end to end.

The model is non-linear and its patch is smaller than the volume, so the sliding-window
prediction, one patch around the lesion and one whole-volume pass all give other logits and other
maps. The oracle of the map is autograd through MONAI's own ``sliding_window_inference`` (the
prediction), row by row; the oracle of the table's explained probability is the prediction.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from conftest import load_nifti, write_channels
from instasal.io import read_subject
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.prepare import prepare_subject
from instasal.saliency import ExplainedPass, SmoothGradConfig, instance_smoothgrad_many
from instasal.trust.faithfulness import deletion_insertion, window_evaluator

SHAPE = (24, 20, 20)
PATCH = 12
# float32 sums over a few windows and a few hundred weights: ~1e-6 of the largest entry
ROUND_OFF = 1e-5


class SmallNonLinearModel(nn.Module):
    """Lesion logit ≈ Σ_j tanh(3×3×3 mean of FLAIR) − 2.5, plus small random weights everywhere
    (so that windows, patches and the whole volume give different logits)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first = nn.Conv3d(2, 4, 3, padding=1)
        self.second = nn.Conv3d(4, 2, 3, padding=1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
            self.first.weight[:, 0] += 1.0 / 27
            self.second.weight[1, :, 1, 1, 1] += 1.0
            bias = self.second.bias
            assert bias is not None
            bias[1] = -2.5
        self.card = {
            "name": "small-non-linear-test",
            "architecture": "two dilated convolutions",
            "channel_names": ["FLAIR", "T1w"],
            "patch_size": [PATCH] * 3,
            "threshold": 0.5,
            "target_class": 1,
            "orientation": "RAS",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


@pytest.fixture
def images(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    flair = rng.normal(0.0, 0.3, SHAPE).astype(np.float32)
    t1w = rng.normal(0.0, 0.3, SHAPE).astype(np.float32)
    flair[11:13, 9:11, 9:11] = 4.0  # straddles the windows' overlap along every axis
    return write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w})


def _settings(context: str | None) -> ExplainSettings:
    return ExplainSettings(
        smoothgrad=SmoothGradConfig(noise_level=0.0),
        gradcam=None,
        n_true_negatives=0,
        context=context,  # type: ignore[arg-type]
    )


def _model_input(paths: list[Path], model: nn.Module) -> torch.Tensor:
    """The model's input as the run prepares it."""
    return prepare_subject(read_subject(paths), model).x


def _prediction_rows_max(model: nn.Module, x: torch.Tensor, domain: np.ndarray) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    stitched = sliding_window_inference(
        leaf[None], (PATCH,) * 3, 2, model, overlap=0.5, mode="gaussian", sigma_scale=0.125
    )
    assert isinstance(stitched, torch.Tensor)
    logits = stitched[0, 1]
    best: torch.Tensor | None = None
    for voxel in np.argwhere(domain).tolist():
        row = torch.autograd.grad(logits[tuple(voxel)], leaf, retain_graph=True)[0]
        best = row if best is None else torch.where(row.abs() > best.abs(), row, best)
    assert best is not None
    return best


def test_default_maps_are_the_rows_of_the_prediction_and_the_table_says_so(
    tmp_path: Path, images: list[Path]
) -> None:
    model = SmallNonLinearModel().eval()
    result = explain_subject(
        images, model, tmp_path / "out", settings=_settings(None), report=False
    )
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["resolved"]["context"] == "deployed"
    table = result.table
    assert len(table) >= 1
    lesion = table.iloc[0]
    domain = result.instances.mask(int(lesion["id"]))
    x = _model_input(images, model)
    expected = _prediction_rows_max(model, x, domain)
    peak = float(expected.abs().max())
    for k, channel in enumerate(("FLAIR", "T1w")):
        saliency = load_nifti(result.layout.smoothgrad(int(lesion["id"]), channel)).get_fdata()
        np.testing.assert_allclose(saliency, expected[k].numpy(), rtol=0, atol=ROUND_OFF * peak)
    for statistic in ("mean", "max"):
        assert lesion[f"explained_prob_{statistic}"] == pytest.approx(
            lesion[f"prob_{statistic}"], abs=1e-5
        )
    assert bool(lesion["explained_detects"])


@pytest.mark.parametrize("context", ["patch", "full"])
def test_other_contexts_show_their_gap_to_the_prediction(
    tmp_path: Path, images: list[Path], context: str
) -> None:
    model = SmallNonLinearModel().eval()
    result = explain_subject(
        images, model, tmp_path / context, settings=_settings(context), report=False
    )
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["resolved"]["context"] == context
    gaps = (result.table["explained_prob_mean"] - result.table["prob_mean"]).abs()
    assert float(gaps.max()) > 1e-3


def test_deletion_in_the_deployed_context_evaluates_the_predictions_logit(
    images: list[Path],
) -> None:
    model = SmallNonLinearModel().eval()
    x = _model_input(images, model)
    with torch.no_grad():
        prediction = sliding_window_inference(
            x[None], (PATCH,) * 3, 2, model, overlap=0.5, mode="gaussian", sigma_scale=0.125
        )
    assert isinstance(prediction, torch.Tensor)
    omega = np.zeros(SHAPE, dtype=bool)
    omega[11:13, 9:11, 9:11] = True
    deployed = ExplainedPass(context="deployed")
    slices, evaluate = window_evaluator(model, omega, explained=deployed, volume=x)
    ((probability, logit),) = evaluate([x[(slice(None), *slices)].numpy()])
    expected = torch.softmax(prediction[0], dim=0)[1][torch.from_numpy(omega)]
    assert probability == pytest.approx(float(expected.double().mean()), abs=1e-5)
    assert logit == pytest.approx(float(prediction[0, 1][torch.from_numpy(omega)].mean()), abs=1e-4)
    saliency_map = instance_smoothgrad_many(
        model, x, {1: omega}, SmoothGradConfig(noise_level=0.0), deployed
    )[1]
    faithful = deletion_insertion(
        model,
        x,
        omega,
        {"smoothgrad": saliency_map},
        spacing=(1.0, 1.0, 1.0),
        n_steps=10,
        n_random=1,
        explained=deployed,
    )
    start = faithful.curves[faithful.curves["fraction"] == 0]
    assert np.allclose(start[start["kind"] == "deletion"]["logit_mean"], logit, atol=1e-4)
    assert set(faithful.better_than_image) >= {"smoothgrad", "smoothgrad_times_delta"}


@pytest.mark.parametrize(
    ("kind", "detects", "warned"),
    [
        ("TP", True, False),
        ("FP", False, True),
        ("lesion", "False", True),
        ("FN", False, False),  # the prediction missed it too
        ("TN", "True", True),  # the explained forward would find what the prediction did not
    ],
)
def test_the_report_warns_where_the_explained_forward_decides_otherwise(
    kind: str, detects: object, warned: bool
) -> None:
    from instasal.report.html import _explained_text

    row: dict[Hashable, Any] = {
        "type": kind,
        "explained_prob_mean": 0.2,
        "explained_prob_max": 0.4,
        "explained_detects": detects,
    }
    text = _explained_text(row)
    assert text.startswith("0.200 / 0.400")
    assert ("unlike the prediction" in text) == warned


def test_the_report_says_grad_cam_ran_on_the_patch_window_in_the_deployed_context() -> None:
    from instasal.report.html import _gradcam_text

    settings = {"gradcam": True, "gradcam_variant": "gradcam++"}
    resolved = {"context": "deployed", "gradcam_context": "patch", "gradcam_layer": "model.1"}
    assert _gradcam_text(settings, resolved).endswith(
        "patch context (a layer belongs to one window)"
    )
    resolved |= {"context": "patch"}
    assert _gradcam_text(settings, resolved) == "gradcam++ at layer model.1"
