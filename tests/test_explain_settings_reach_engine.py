"""The SmoothGrad settings of a run reach the engine: on a non-linear network, N, the noise level
and the seed each change the written maps and table, and every map equals the engine's called
directly with those settings (a model linear in its input would hide a pipeline that ignored
them: its gradient is the same under any noise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import load_nifti, set_card, write_channels
from instasal import (
    ExplainedPass,
    ExplainSettings,
    SmoothGradConfig,
    explain_subject,
    instance_smoothgrad_many,
    prepare_subject,
    read_subject,
)
from instasal.pipeline.results import ExplainResult


class Curved(nn.Module):
    """tanh between two 3×3×3 convolutions, fixed weights: its gradient depends on the input."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.first = nn.Conv3d(2, 3, 3, padding=1)
        self.second = nn.Conv3d(3, 2, 3, padding=1)
        with torch.no_grad():
            for conv in (self.first, self.second):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.3)
                assert conv.bias is not None
                conv.bias.zero_()
            bias = self.second.bias
            assert bias is not None
            bias[1] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(2.0 * self.first(x)))


def _model() -> nn.Module:
    model = Curved()
    set_card(
        model,
        {
            "name": "curved",
            "architecture": "module",
            "normalisation": "none",
            "patch_size": [8, 8, 8],
            "threshold": 0.5,
            "orientation": "RAS",
        },
    )
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("subject")
    rng = np.random.default_rng(5)
    flair = rng.normal(0.0, 0.3, (12, 12, 12)).astype(np.float32)
    flair[4:7, 4:7, 4:7] += 3.0
    t1w = rng.normal(0.0, 0.3, (12, 12, 12)).astype(np.float32)
    return write_channels(folder, {"FLAIR": flair, "T1w": t1w})


BASE = {"n_samples": 3, "noise_level": 0.1, "seed": 1}
VARIANTS = {
    "base": BASE,
    "n_samples": BASE | {"n_samples": 4},
    "noise_level": BASE | {"noise_level": 0.2},
    "seed": BASE | {"seed": 2},
}


def _run(
    images: list[Path], out: Path, values: dict[str, float]
) -> tuple[ExplainResult, dict[int, np.ndarray]]:
    config = SmoothGradConfig(**values)  # type: ignore[arg-type]
    settings = ExplainSettings(config, None, context="patch", max_lesions=1)
    result = explain_subject(images, _model(), out, settings=settings, report=False, budget_s=None)
    maps = {}
    for lesion_id in result.table["id"]:
        stacked = [
            np.asarray(load_nifti(result.layout.smoothgrad(int(lesion_id), channel)).dataobj)
            for channel in ("FLAIR", "T1w")
        ]
        maps[int(lesion_id)] = np.stack(stacked)
    return result, maps


def test_each_setting_changes_the_maps_as_the_engine_does(
    images: list[Path], tmp_path: Path
) -> None:
    runs = {name: _run(images, tmp_path / name, values) for name, values in VARIANTS.items()}
    base_result, base_maps = runs["base"]
    assert len(base_result.table) >= 1
    prepared = prepare_subject(read_subject(images), _model())
    for name, values in VARIANTS.items():
        result, maps = runs[name]
        domains = {int(i): result.instances.mask(int(i)) for i in result.table["id"]}
        config = SmoothGradConfig(**values)  # type: ignore[arg-type]
        explained = ExplainedPass(target=1, context="patch")
        direct = instance_smoothgrad_many(prepared.network, prepared.x, domains, config, explained)
        for lesion_id, written in maps.items():
            expected = direct[lesion_id].numpy()
            scale = float(np.abs(expected).max())
            # float32 maps, written as float32 NIfTI: equal to the engine's to round-off
            np.testing.assert_allclose(written, expected, rtol=0, atol=1e-6 * scale)
        if name != "base":
            first = int(base_result.table["id"].iloc[0])
            assert not np.allclose(maps[first], base_maps[first], rtol=0, atol=1e-4), name
            peaks = ["peak_FLAIR", "peak_T1w"]
            assert not np.allclose(
                result.table[peaks].to_numpy(float), base_result.table[peaks].to_numpy(float)
            ), name
