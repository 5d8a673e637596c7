"""explain_subject and the CLI with models that crashed or misled under the defaults (issue 24).

TorchScript models (no forward hooks, so no Grad-CAM++), networks whose input sides must be
multiples of 16, models that output NaN, channels other than FLAIR and T1w. The models are tiny
convolutions on the 26×16×16 subjects of ``conftest.py``; each run takes about a second.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from conftest import LINEAR_AFFINE, LINEAR_SHAPE, PointwiseLinear, load_nifti, set_card
from instasal.cli import run_app
from instasal.errors import ImageError, InstasalWarning, ModelError
from instasal.models import card_of, load_model
from instasal.models.segmentation import segment_subject
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.saliency import GradCamConfig, SmoothGradConfig

FAST = ExplainSettings(SmoothGradConfig(n_samples=2), n_true_negatives=1)
"""The default settings (Grad-CAM++ on) with fewer noise samples."""


def _images(dataset: Path, participant: str = "sub-01") -> list[Path]:
    anat = dataset / participant / "anat"
    return [anat / f"{participant}_FLAIR.nii.gz", anat / f"{participant}_T1w.nii.gz"]


def _torchscript(tmp_path: Path, how: str, card: dict[str, object]) -> Path:
    network = PointwiseLinear().eval()
    compiled = (
        torch.jit.script(network)
        if how == "script"
        else torch.jit.trace(network, torch.zeros(1, 2, *LINEAR_SHAPE))
    )
    path = tmp_path / f"{how}.pt"
    torch.jit.save(compiled, str(path))
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


TORCHSCRIPT_CARDS = {
    "script, layer named": ("script", {"gradcam_layer": "conv"}),
    "trace, no layer": ("trace", {}),
}


@pytest.mark.parametrize("how, layer", TORCHSCRIPT_CARDS.values(), ids=list(TORCHSCRIPT_CARDS))
def test_torchscript_model_skips_gradcam_with_a_note(
    tmp_path: Path, linear_dataset: Path, how: str, layer: dict[str, object]
) -> None:
    card = {"threshold": 0.5, "patch_size": list(LINEAR_SHAPE)} | layer
    model = _torchscript(tmp_path, how, card)
    out = tmp_path / "out"
    with pytest.warns(InstasalWarning, match=r"Grad-CAM\+\+ skipped .*TorchScript"):
        result = explain_subject(_images(linear_dataset), model, out, settings=FAST, progress=None)
    assert len(result.table) == 1
    assert result.table["gradcam_peak"].isna().all()
    assert [note for note in result.notes if "Grad-CAM++ skipped" in note]
    provenance = json.loads(result.layout.provenance.read_text())
    assert any("TorchScript" in note for note in provenance["notes"])
    assert provenance["resolved"]["gradcam_layer"] is None
    sidecar = json.loads(result.layout.table.with_suffix(".json").read_text())
    assert "TorchScript" in sidecar["gradcam_peak"]["Description"]
    assert not list(out.rglob("*gradcampp*"))
    assert "Grad-CAM++ skipped" in result.report.read_text(encoding="utf-8")


def test_torchscript_model_explained_by_the_cli_with_defaults(
    tmp_path: Path, linear_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _torchscript(tmp_path, "script", {"threshold": 0.5, "patch_size": list(LINEAR_SHAPE)})
    out = tmp_path / "out"
    images = [str(p) for p in _images(linear_dataset)]
    status = run_app(["explain", *images, "--model", str(model), "--out", str(out)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert status == 0, text
    notes = [line for line in text.splitlines() if "Grad-CAM++ skipped" in line]
    assert len(notes) == 1 and notes[0].startswith("note:")
    table = pd.read_csv(next(out.glob("*_lesions.tsv")), sep="\t")
    assert len(table) >= 1
    assert table["gradcam_peak"].isna().all()


class NanOutput(PointwiseLinear):
    """:class:`PointwiseLinear` whose logits are NaN wherever the normalised FLAIR is above 2
    (the lesion, about 8 standard deviations above the brain's mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(x)
        return torch.where(x[:, :1] > 2, torch.full_like(logits, float("nan")), logits)


@pytest.fixture
def nan_model_path(tmp_path: Path) -> Path:
    path = tmp_path / "nan_model.pt"
    torch.jit.save(torch.jit.script(NanOutput()), str(path))
    card = {"threshold": 0.5, "patch_size": list(LINEAR_SHAPE), "channel_names": ["FLAIR", "T1w"]}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_nan_prediction_is_refused_by_explain(
    tmp_path: Path, linear_dataset: Path, nan_model_path: Path
) -> None:
    with pytest.raises(ModelError, match=r"model 'nan_model' predicted \d+ NaN or infinite"):
        explain_subject(
            _images(linear_dataset), nan_model_path, tmp_path / "out", settings=FAST, progress=None
        )


def test_nan_prediction_is_refused_by_segment(
    tmp_path: Path, linear_dataset: Path, nan_model_path: Path
) -> None:
    model = load_model(nan_model_path)
    with pytest.raises(ModelError, match=r"model 'nan_model' predicted \d+ NaN or infinite"):
        segment_subject(_images(linear_dataset), model, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.nii.gz"))


@pytest.mark.parametrize("command", ["explain", "segment"])
def test_nan_prediction_is_one_error_line_in_the_cli(
    tmp_path: Path,
    linear_dataset: Path,
    nan_model_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    images = [str(p) for p in _images(linear_dataset)]
    arguments = [command, *images, "--model", str(nan_model_path), "--out", str(tmp_path / "o")]
    assert run_app(arguments) == 2
    captured = capsys.readouterr()
    errors = [line for line in (captured.out + captured.err).splitlines() if "error:" in line]
    assert len(errors) == 1 and "nan_model" in errors[0] and "NaN" in errors[0]


@pytest.fixture
def t2_pd_files(tmp_path: Path, linear_dataset: Path) -> list[Path]:
    """The first linear subject's channels saved as ``_T2w`` and ``_PDw`` (BIDS suffixes)."""
    flair, t1w = _images(linear_dataset)
    folder = tmp_path / "t2pd" / "sub-01" / "anat"
    folder.mkdir(parents=True)
    files = [folder / "sub-01_T2w.nii.gz", folder / "sub-01_PDw.nii.gz"]
    for source, target in zip((flair, t1w), files, strict=True):
        shutil.copy(source, target)
    return files


@pytest.fixture
def t2_pd_model_path(tmp_path: Path) -> Path:
    """:class:`PointwiseLinear` taking T2w then PDw (card beside the TorchScript file)."""
    path = tmp_path / "t2pd.pt"
    torch.jit.save(torch.jit.script(PointwiseLinear()), str(path))
    card = {"threshold": 0.5, "patch_size": list(LINEAR_SHAPE), "channel_names": ["T2w", "PDw"]}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def test_channel_names_come_from_the_model_card(
    tmp_path: Path, t2_pd_files: list[Path], t2_pd_model_path: Path
) -> None:
    result = explain_subject(
        t2_pd_files, t2_pd_model_path, tmp_path / "out", settings=FAST, progress=None
    )
    assert len(result.table) == 1
    assert {"peak_T2w", "peak_PDw"} <= set(result.table.columns)
    assert not any("FLAIR" in column for column in result.table.columns)


def test_segment_takes_the_model_cards_channels(
    tmp_path: Path, t2_pd_files: list[Path], t2_pd_model_path: Path
) -> None:
    result = segment_subject(t2_pd_files, load_model(t2_pd_model_path), tmp_path / "out")
    assert result.mask.sum() == 27


def test_swapped_files_are_still_refused_by_their_names(
    tmp_path: Path, t2_pd_files: list[Path], t2_pd_model_path: Path
) -> None:
    with pytest.raises(ImageError, match="say the channels are PDw, T2w"):
        explain_subject(
            t2_pd_files[::-1], t2_pd_model_path, tmp_path / "out", settings=FAST, progress=None
        )


@pytest.mark.parametrize("ignore", [False, True])
def test_cli_explains_t2_pd_channels(
    tmp_path: Path,
    t2_pd_files: list[Path],
    t2_pd_model_path: Path,
    capsys: pytest.CaptureFixture[str],
    ignore: bool,
) -> None:
    """In the card's order they are explained; swapped, only ``--ignore-channel-names`` lets them
    through, and then to the end (the flag reaches explain_subject)."""
    images = [str(p) for p in (t2_pd_files[::-1] if ignore else t2_pd_files)]
    flags = ["--ignore-channel-names"] if ignore else []
    arguments = ["explain", *images, "--model", str(t2_pd_model_path), "--out", str(tmp_path / "o")]
    status = run_app([*arguments, "--n-samples", "2", *flags])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    table = pd.read_csv(next((tmp_path / "o").glob("*_lesions.tsv")), sep="\t")
    assert {"peak_T2w", "peak_PDw"} <= set(table.columns)


class NeedsSixteen(PointwiseLinear):
    """:class:`PointwiseLinear` that fails on any input side not a multiple of 16, as a U-Net
    with four poolings does; its card does not say so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for size in x.shape[2:]:
            if size % 16 != 0:
                raise RuntimeError("Sizes of tensors must match except in dimension 1")
        return self.conv(x)


PATCHES = {"whole volume": {}, "patch 24×16×16": {"patch_size": [24, 16, 16]}}


@pytest.mark.parametrize("patch", PATCHES.values(), ids=list(PATCHES))
def test_size_divisibility_found_at_load_and_padded(
    tmp_path: Path, linear_dataset: Path, patch: dict[str, object]
) -> None:
    path = tmp_path / "sixteen.pt"
    torch.jit.save(torch.jit.script(NeedsSixteen()), str(path))
    path.with_suffix(".json").write_text(json.dumps({"threshold": 0.5} | patch))
    assert card_of(load_model(path)).size_divisibility == (16, 16, 16)
    result = explain_subject(_images(linear_dataset), path, tmp_path / "o", settings=FAST)
    assert len(result.table) == 1 and result.table["prob_max"].iloc[0] > 0.99
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["model"]["card"]["size_divisibility"] == [16, 16, 16]
    segmented = segment_subject(_images(linear_dataset), load_model(path), tmp_path / "s")
    assert segmented.mask.sum() == 27


def test_model_without_a_gradcam_layer_skips_gradcam_with_a_note(
    tmp_path: Path, linear_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run asks GradCamConfig.layer_of, the one place that resolves a layer, and skips on
    its refusal."""
    asked: list[str | None] = []
    layer_of = GradCamConfig.layer_of

    def spy(config: GradCamConfig, model: torch.nn.Module) -> str:
        asked.append(config.layer)
        return layer_of(config, model)

    monkeypatch.setattr(GradCamConfig, "layer_of", spy)
    model = PointwiseLinear().eval()
    card = {"name": "plain", "architecture": "module", "threshold": 0.5}
    set_card(model, card | {"patch_size": list(LINEAR_SHAPE), "channel_names": ["FLAIR", "T1w"]})
    with pytest.warns(InstasalWarning, match=r"Grad-CAM\+\+ skipped .*names no layer"):
        result = explain_subject(
            _images(linear_dataset), model, tmp_path / "o", settings=FAST, progress=None
        )
    assert len(result.table) == 1 and result.table["gradcam_peak"].isna().all()
    assert asked == [None]


def _speckled_subject(tmp_path: Path, count: int) -> list[Path]:
    """A 26×16×16 subject whose FLAIR holds ``count`` isolated one-voxel lesions."""
    rng = np.random.default_rng(3)  # bounded noise: no voxel of it reaches the threshold
    flair = rng.uniform(9.9, 10.1, LINEAR_SHAPE).astype(np.float32)
    t1w = rng.uniform(9.9, 10.1, LINEAR_SHAPE).astype(np.float32)
    voxels = [(2 + 3 * (k % 8), 2 + 3 * (k // 8 % 4), 2 + 3 * (k // 32)) for k in range(count)]
    for voxel in voxels:
        flair[voxel] = 40.0
    files = [tmp_path / "sub-01_FLAIR.nii.gz", tmp_path / "sub-01_T1w.nii.gz"]
    for data, path in zip((flair, t1w), files, strict=True):
        nib.save(nib.Nifti1Image(data, LINEAR_AFFINE), path)
    return files


def test_report_caps_its_lesion_panels_and_every_stage_reports_progress(
    tmp_path: Path, linear_model_path: Path
) -> None:
    calls: list[tuple[str, float, float]] = []
    settings = ExplainSettings(SmoothGradConfig(n_samples=1), None, report_panels=5)
    result = explain_subject(
        _speckled_subject(tmp_path, 12),
        linear_model_path,
        tmp_path / "out",
        settings=settings,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert len(result.table) == 12  # every lesion stays in the table
    maps = list((tmp_path / "out").rglob("*desc-smoothgradFLAIR_saliency*"))
    assert len(maps) == 12  # and every map
    html = result.report.read_text(encoding="utf-8")
    assert html.count('class="lesion-section"') == 5
    assert "5 of the 12 explained domains" in html and "the other 7" in html
    panels = [(done, total) for stage, done, total in calls if stage == "report panels"]
    assert panels[0] == (0, 5) and panels[-1] == (5, 5)
    stages = {stage.split(" of ")[0] for stage, _, _ in calls}
    assert {"segmenting", "finding domains", "writing tables", "report panels"} <= stages
    saliency = [(done, total) for stage, done, total in calls if stage.startswith("saliency of")]
    assert len({total for _, total in saliency}) == 1  # one count over all batches
    assert saliency[-1][0] == saliency[-1][1] > 0
    assert [done for done, _ in saliency] == sorted(done for done, _ in saliency)
    provenance = json.loads(result.layout.provenance.read_text())
    assert provenance["report"] == {"panels_cap": 5, "panels_shown": 5, "panels_left_out": 7}


def test_report_panels_option_of_the_cli(
    tmp_path: Path, linear_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [str(p) for p in _speckled_subject(tmp_path, 4)]
    out = tmp_path / "out"
    arguments = ["explain", *images, "--model", str(linear_model_path), "--out", str(out)]
    assert run_app([*arguments, "--n-samples", "1", "--report-panels", "3"]) == 0
    html = next(out.glob("*report*.html")).read_text(encoding="utf-8")
    assert html.count('class="lesion-section"') == 3 and "the other 1 are" in html
    assert run_app([*arguments, "--report-panels", "-1"]) == 2
    capsys.readouterr()


def test_true_negatives_that_do_not_fit_are_noted(
    tmp_path: Path, linear_dataset: Path, linear_model_path: Path
) -> None:
    """A tissue mask holding only the lesion's 2 mm rim leaves no voxel 3 mm from it for TN."""
    derivatives = linear_dataset / "derivatives" / "manual" / "sub-01" / "anat"
    reference = derivatives / "sub-01_desc-lesion_mask.nii.gz"
    lesion = np.asarray(load_nifti(reference).dataobj) > 0
    rim = ndimage.binary_dilation(lesion) & ~lesion
    tissue = tmp_path / "rim_mask.nii.gz"
    nib.save(nib.Nifti1Image(rim.astype(np.uint8), LINEAR_AFFINE), tissue)
    settings = ExplainSettings(SmoothGradConfig(n_samples=1), None, n_true_negatives=3)
    with pytest.warns(InstasalWarning, match="0 of the 3 TN domains asked for fit"):
        result = explain_subject(
            _images(linear_dataset),
            linear_model_path,
            tmp_path / "out",
            reference=reference,
            tissue_mask=tissue,
            settings=settings,
            progress=None,
        )
    assert (result.table["type"] == "TN").sum() == 0
    assert any("TN domains asked for" in note for note in result.notes)
    provenance = json.loads(result.layout.provenance.read_text())
    assert any("0 of the 3 TN domains" in note for note in provenance["notes"])
    assert "0 of the 3 TN domains" in result.report.read_text(encoding="utf-8")
