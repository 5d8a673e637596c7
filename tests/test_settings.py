"""ExplainSettings: the method configs it holds, what it refuses, and run keys that do not move.

The run keys below were computed by the release before the settings held the method configs
(commit 9f74e44, flat keyword fields): a folder written then must resume now, so the key of the
same settings must be the same string.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from instasal.errors import ConfigurationError
from instasal.pipeline.settings import DEMO_SETTINGS, ExplainSettings, run_key
from instasal.saliency import GradCamConfig, SmoothGradConfig

EARLIER_KEYS = [
    (ExplainSettings(), "37b3d867e90b90bb"),
    (DEMO_SETTINGS, "caf4b0bfdb02f443"),
    (
        ExplainSettings(
            SmoothGradConfig(n_samples=8, noise_level=0.1, aggregation="mean", seed=3),
            None,
            context="patch",
            trust=True,
        ),
        "fe6a8d2bece6d3b6",
    ),
    (ExplainSettings(gradcam=GradCamConfig("model.1", variant="gradcam")), "5915afa6b63a5476"),
]


@pytest.mark.parametrize(("settings", "key"), EARLIER_KEYS)
def test_run_keys_are_those_of_the_flat_settings_before(
    settings: ExplainSettings, key: str
) -> None:
    assert run_key(settings.as_dict()) == key


def test_the_configs_are_held_as_given() -> None:
    smoothgrad = SmoothGradConfig(n_samples=3, noise_range="first_channel", engine="naive")
    gradcam = GradCamConfig("model.1", variant="gradcam")
    settings = ExplainSettings(smoothgrad, gradcam)
    assert settings.smoothgrad is smoothgrad and settings.gradcam is gradcam


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ExplainSettings(SmoothGradConfig(context="patch")), "smoothgrad.context is set"),
        (lambda: ExplainSettings(SmoothGradConfig(target=0)), "smoothgrad.target is set"),
        (lambda: ExplainSettings(gradcam=GradCamConfig(patch_size=32)), "gradcam.patch_size"),
        (lambda: ExplainSettings(context="window"), "context must be one of"),  # type: ignore[arg-type]
        (lambda: ExplainSettings(connectivity=8), "connectivity must be one of"),  # type: ignore[arg-type]
        (lambda: ExplainSettings(saliency_of="tta"), "turn Grad-CAM off"),
        (lambda: ExplainSettings(smoothgrad={"n_samples": 2}), "must be a SmoothGradConfig"),  # type: ignore[arg-type]
        (lambda: SmoothGradConfig(noise_level=1.0), r"noise_level must be in \[0, 1\)"),
        (lambda: GradCamConfig(""), "layer '' is not a module name"),
    ],
)
def test_refusals_name_the_field(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_sizes_given_as_lists_are_kept_as_tuples() -> None:
    config = SmoothGradConfig(patch_size=[32, 32, 16], size_divisibility=[16, 16, 8])
    assert config.patch_size == (32, 32, 16) and config.size_divisibility == (16, 16, 8)
    assert config == SmoothGradConfig(patch_size=(32, 32, 16), size_divisibility=(16, 16, 8))
    assert SmoothGradConfig(noise_level=0.0, n_samples=9).n_draws == 1
