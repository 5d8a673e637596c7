"""ExplainSettings: the method configs it holds, what it refuses, and run keys that do not move.

The run keys below were computed by the release before the settings held the method configs
(commit 9f74e44, flat keyword fields): a folder written then must resume now, so the key of the
same settings must be the same string.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from instasal.errors import ConfigurationError
from instasal.pipeline.settings import ExplainSettings, run_key
from instasal.saliency import ExplainedPass, GradCamConfig, SmoothGradConfig

EARLIER_KEYS = [
    (ExplainSettings(), "37b3d867e90b90bb"),
    (  # the demo's settings before the deployed context made its rows dearer
        ExplainSettings(SmoothGradConfig(n_samples=4), n_true_negatives=4, max_lesions=6),
        "caf4b0bfdb02f443",
    ),
    (  # N = 8 is below the paper's 50: "reduced" true since it is derived (was "fe6a8d2bece6d3b6"
        # when a run said so only when told, so such a folder of an earlier release is not resumed)
        ExplainSettings(
            SmoothGradConfig(n_samples=8, noise_level=0.1, aggregation="mean", seed=3),
            None,
            context="patch",
            trust=True,
        ),
        "59477b3d96825d8c",
    ),
    (ExplainSettings(gradcam=GradCamConfig("model.1", variant="gradcam")), "5915afa6b63a5476"),
]


def test_settings_below_the_papers_are_flagged_whoever_sets_them() -> None:
    assert ExplainSettings().reductions == ()
    assert not ExplainSettings().as_dict()["reduced"]
    fewer = ExplainSettings(SmoothGradConfig(n_samples=2), max_lesions=2)
    assert fewer.reduced and fewer.as_dict()["reduced"]
    assert fewer.reductions == (
        "N = 2 noise draws (paper: 50)",
        "at most 2 domain(s) of each type, drawn at random (paper: every lesion)",
    )


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
        (lambda: ExplainedPass(context="window"), "context must be one of"),  # type: ignore[arg-type]
        (lambda: ExplainedPass(target=-1), "target must be a non-negative integer"),
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
    explained = ExplainedPass(patch_size=[32, 32, 16], size_divisibility=[16, 16, 8])
    assert explained.patch_size == (32, 32, 16) and explained.size_divisibility == (16, 16, 8)
    assert explained == ExplainedPass(patch_size=(32, 32, 16), size_divisibility=(16, 16, 8))
    assert SmoothGradConfig(noise_level=0.0, n_samples=9).n_draws == 1


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 2**70, 1.5, True])
def test_a_seed_outside_0_to_2_63_is_refused_naming_it(seed: object) -> None:
    from instasal.training import TrainingConfig

    expected = (
        f"seed must be a whole number from 0 to 2**63 - 1 (9223372036854775807), got {seed!r}"
    )
    with pytest.raises(ConfigurationError) as refused:
        SmoothGradConfig(seed=seed)  # type: ignore[arg-type]
    assert str(refused.value) == expected
    with pytest.raises(ConfigurationError) as refused:
        TrainingConfig(seed=seed)  # type: ignore[arg-type]
    assert str(refused.value) == expected


def test_the_largest_seed_is_taken() -> None:
    assert SmoothGradConfig(seed=2**63 - 1).seed == 2**63 - 1


@pytest.mark.parametrize("command", ["explain", "cohort", "train"])
def test_the_command_line_refuses_a_seed_beyond_64_bits_in_one_line(
    command: str, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import write_linear_subject
    from instasal.cli import run_app

    dataset = tmp_path / "dataset"
    write_linear_subject(dataset, "sub-01", rng)
    anat = dataset / "sub-01" / "anat"
    out = str(tmp_path / "out")
    few = ["--n-samples", "1", "--n-true-negatives", "0", "--no-gradcam", "--max-lesions", "1"]
    arguments = {  # little to do, should the seed be taken
        "explain": ["explain", *map(str, sorted(anat.glob("*.nii.gz"))), "-m", "unet", *few],
        "cohort": ["cohort", str(dataset), "-m", "unet", *few],
        "train": ["train", str(dataset), "--val", str(dataset), "--epochs", "1"],
    }
    fast_training = ["--iterations", "1", "--batch-size", "1", "--patch", "16"]
    if command == "train":
        arguments[command] += fast_training
    assert run_app([*arguments[command], "--out", out, "--seed", str(2**70)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: seed must be a whole number from 0 to 2**63 - 1 (9223372036854775807), got {2**70}"
    )
    assert not (tmp_path / "out").exists()


def test_the_experiment_options_refuse_a_seed_beyond_64_bits() -> None:
    from instasal.experiments import ExperimentOptions

    with pytest.raises(ConfigurationError, match=r"^seed must be a whole number from 0"):
        ExperimentOptions(seed=2**70)
