"""The default patch context through explain_subject, on a model where patch and full differ.

The model is one dilated 3×3×3 convolution (dilation 12, no non-linearity): the lesion logit at v
is ``Σ_d w_k[d]·x_k[v + 12d] + b``. Its Jacobian row for v holds ``w_k[d]`` at ``v + 12d`` (inside
the grid) whatever the input, so the max-aggregated map of a domain Ω is known by hand: the centre
weight on Ω, the off-centre weight on Ω shifted by ±12 voxels. With ``context="patch"`` the forward
pass sees only a 20³ patch centred on Ω (zero outside it): entries 12 voxels away lie outside the
patch and vanish, so the two contexts give different maps, each with its own oracle.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import load_nifti, set_pointwise, write_channels
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.saliency import SmoothGradConfig

SHAPE = (40, 40, 40)
PATCH = 20
DILATION = 12
CENTRE = {"FLAIR": 1.5, "T1w": -0.5}
OFF_CENTRE = {"FLAIR": 0.01, "T1w": 0.02}
BIAS = -40.0


class DilatedLinearModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 3, padding=DILATION, dilation=DILATION)
        set_pointwise(
            self.conv, {(1, 0): OFF_CENTRE["FLAIR"], (1, 1): OFF_CENTRE["T1w"]}, {1: BIAS}
        )
        with torch.no_grad():
            for k, name in enumerate(("FLAIR", "T1w")):
                self.conv.weight[1, k, 1, 1, 1] = CENTRE[name]
        self.card = {
            "name": "dilated-linear-test",
            "architecture": "dilated 3x3x3 convolution",
            "channel_names": ["FLAIR", "T1w"],
            "patch_size": [PATCH] * 3,
            "threshold": 0.5,
            "gradcam_layer": "conv",
            "target_class": 1,
            "orientation": "RAS",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _oracle(domain: np.ndarray, channel: str, box: tuple[slice, ...] | None) -> np.ndarray:
    """Hand-computed max aggregation; with ``box``, only entries inside the patch."""
    expected = np.zeros(SHAPE)
    for v in np.argwhere(domain):
        for d in itertools.product((-1, 0, 1), repeat=3):
            u = v + DILATION * np.array(d)
            if np.any(u < 0) or np.any(u >= SHAPE):
                continue
            if box is not None and not all(
                s.start <= c < s.stop for s, c in zip(box, u, strict=True)
            ):
                continue
            weight = CENTRE[channel] if d == (0, 0, 0) else OFF_CENTRE[channel]
            if abs(weight) > abs(expected[tuple(u)]):
                expected[tuple(u)] = weight
    return expected


def _patch_box(domain: np.ndarray) -> tuple[slice, ...]:
    """The documented patch rule: the card's size centred on Ω's bounding box, inside the grid."""
    where = np.argwhere(domain)
    box = []
    for lo, hi, extent in zip(where.min(0), where.max(0) + 1, SHAPE, strict=True):
        start = min(max((lo + hi) // 2 - PATCH // 2, 0), extent - PATCH)
        box.append(slice(int(start), int(start) + PATCH))
    return tuple(box)


@pytest.fixture
def images(tmp_path: Path, rng: np.random.Generator) -> list[Path]:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    flair = rng.normal(10.0, 0.2, SHAPE).astype(np.float32)
    t1w = rng.normal(10.0, 0.2, SHAPE).astype(np.float32)
    flair[18:21, 17:20, 19:22] = 40.0
    return write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w}, affine)


@pytest.mark.parametrize("context", ["patch", "full"])
def test_each_context_gives_its_own_hand_computed_map(tmp_path, images, context):
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2, seed=0),
        gradcam=None,
        n_true_negatives=0,
        context=context,
    )
    result = explain_subject(
        images, DilatedLinearModel(), tmp_path / context, settings=settings, report=False
    )
    (record,) = list(result.instances)
    domain = result.instances.mask(record.id)
    assert int(domain.sum()) == 27
    box = _patch_box(domain) if context == "patch" else None
    for channel in ("FLAIR", "T1w"):
        saliency = load_nifti(result.layout.smoothgrad(record.id, channel)).get_fdata()
        expected = _oracle(domain, channel, box)
        # float32 sums of one weight: exact up to float32 representation of the weights
        np.testing.assert_allclose(saliency, expected, rtol=1e-6, atol=1e-7)
    full_entries = int(np.count_nonzero(_oracle(domain, "FLAIR", None)))
    patch_entries = int(np.count_nonzero(_oracle(domain, "FLAIR", _patch_box(domain))))
    assert patch_entries < full_entries  # the contexts really differ on this model
