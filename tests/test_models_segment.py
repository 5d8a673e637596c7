"""Segmenting a user's NIfTI: outputs on the input grid, atomic, never silently overwritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FlairThreshold, load_nifti, write_channels
from instasal.cli import model_commands  # noqa: F401  (registers train, segment, evaluate)
from instasal.cli._app import run_app
from instasal.errors import ModelError, OutputExistsError
from instasal.io import read_subject
from instasal.models.cards import ModelCard, attach_card
from instasal.models.segmentation import predict_subject, segment_subject

FACTORY_MODULE = """
import torch
from torch import nn


class FlairThreshold(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 1)

    def forward(self, x):
        return self.conv(x)


def flair_threshold():
    return FlairThreshold()
"""


def _model(spacing: tuple[float, float, float] | None = None) -> nn.Module:
    card = ModelCard(
        name="flair-threshold",
        architecture="module",
        normalisation="none",
        patch_size=(8, 8, 8),
        spacing_mm=spacing,
        threshold=0.5,
    )
    return attach_card(FlairThreshold(), card)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    affine = np.array([[-1.0, 0, 0, 20], [0, 1.0, 0, -10], [0, 0, 1.0, 5], [0, 0, 0, 1]])
    lesion = np.zeros((18, 16, 14), bool)
    lesion[4:8, 4:8, 4:8] = True  # 64 mm³
    lesion[12, 12, 12] = True  # 1 mm³: below the 5 mm³ rule
    flair = np.ones(lesion.shape, np.float32) + 2.0 * lesion
    t1w = np.full(lesion.shape, 0.5, np.float32)
    t1w[0, 0, 0] = 0.6  # not constant
    return write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w}, affine)


def test_segment_writes_probability_and_mask_on_the_input_grid(
    images: list[Path], tmp_path: Path
) -> None:
    result = segment_subject(images, _model(), tmp_path / "out")  # as explain_subject
    assert result.probability_path.name == "sub-01_prob.nii.gz"
    assert result.mask_path.name == "sub-01_mask.nii.gz"
    source = load_nifti(images[0])
    for path in (result.probability_path, result.mask_path):
        written = load_nifti(path)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
    mask = np.asarray(load_nifti(result.mask_path).dataobj)
    expected = np.zeros(source.shape, np.uint8)
    expected[4:8, 4:8, 4:8] = 1  # the single bright voxel is dropped by the size rule
    np.testing.assert_array_equal(mask, expected)
    probability = np.asarray(load_nifti(result.probability_path).dataobj)
    assert probability[5, 5, 5] == pytest.approx(1 / (1 + np.exp(-15.0)), rel=1e-5)
    assert probability[0, 0, 0] == pytest.approx(1 / (1 + np.exp(5.0)), rel=1e-5)


def test_segment_refuses_to_overwrite_before_any_work(images: list[Path], tmp_path: Path) -> None:
    segment_subject(images, _model(), tmp_path)
    before = (tmp_path / "sub-01_mask.nii.gz").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match=r"sub-01_prob\.nii\.gz: exists already"):
        segment_subject(images, _model(), tmp_path)
    assert (tmp_path / "sub-01_mask.nii.gz").stat().st_mtime_ns == before
    segment_subject(images, _model(), tmp_path, overwrite=True, threshold=0.99)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_segment_refuses_the_model_before_the_images(images: list[Path], tmp_path: Path) -> None:
    """The order of explain_subject, (images, model, out); the earlier (model, images, out) is
    refused in one line naming both arguments, before any file is written."""
    with pytest.raises(
        TypeError, match=r"segment_subject\(images, model, out\): images is a model"
    ):
        segment_subject(_model(), images, tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_resampling_to_the_model_spacing_keeps_the_input_grid(images: list[Path]) -> None:
    subject = read_subject(images)
    native = predict_subject(_model(), subject)
    resampled = predict_subject(_model(spacing=(2.0, 2.0, 2.0)), subject)
    assert resampled.shape == native.shape == subject.shape
    # the lesion core survives the round trip through the 2 mm grid
    assert resampled[5:7, 5:7, 5:7].min() > 0.5
    assert resampled[14:, :3, :3].max() < 0.5


def test_channels_are_checked(images: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="expects channel 0 to be 'FLAIR', got 'T1w'"):
        predict_subject(_model(), read_subject(images[::-1], ["T1w", "FLAIR"]))
    with pytest.raises(ModelError, match=r"expects 2 channel\(s\) \(FLAIR, T1w\), got 1"):
        segment_subject([images[0]], _model(), tmp_path)


def test_segment_command(
    images: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "user_segmenter.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "weights.pt"
    torch.save(FlairThreshold().state_dict(), weights)
    (tmp_path / "weights.json").write_text('{"normalisation": "none", "patch_size": [8, 8, 8]}')
    model = f"user_segmenter:flair_threshold={weights}"
    arguments = ["segment", *map(str, images), "--model", model, "--out", str(tmp_path / "out")]
    assert run_app(arguments) == 0
    assert (tmp_path / "out" / "sub-01_mask.nii.gz").is_file()
    assert run_app(arguments) == 2
    error = capsys.readouterr().err
    assert "exists already" in error and "Traceback" not in error
    assert run_app(["segment", str(images[0]), "--model", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_threads_option_sets_torch_threads_for_any_command(
    images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    out = ["--out", str(tmp_path / "out")]
    assert run_app(["--threads", "1", "segment", *map(str, images), "--model", "nope", *out]) == 2
    assert calls == [1]  # set before the command ran (and failed on the unknown model)
    assert run_app(["--threads", "0", "segment", *map(str, images), "--model", "unet", *out]) == 2
    assert calls == [1]


def test_a_bad_option_value_is_one_usage_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_app(["phantom", str(tmp_path / "cohort"), "--subjects", "many"]) == 2
    error = capsys.readouterr().err
    assert "Invalid value" in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1 and error.startswith("error:")
    assert not (tmp_path / "cohort").exists()


def test_an_error_naming_a_path_with_brackets_prints_the_path_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "scan[flair]" / "sub-01[x]_FLAIR.nii.gz"
    out = tmp_path / "out"
    assert run_app(["segment", str(missing), "--model", "unet", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "sub-01[x]_FLAIR.nii.gz" in error and "scan[flair]" in error
