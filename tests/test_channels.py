"""Channel order from file names (BIDS suffixes, nnU-Net numbers) against the model's (issue 13)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_linear_subject
from instasal.channels import channel_of_file, check_channel_files, declared_channel_names
from instasal.errors import ImageError
from instasal.saliency import SmoothGradConfig


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub-001_FLAIR.nii.gz", "FLAIR"),
        ("sub-001_ses-02_acq-3d_run-1_T1w.nii", "T1w"),
        ("sub-001_space-MNI_desc-preproc_T2starw.nii.gz", "T2starw"),
        ("sub-001_PD.nii.gz", "PD"),
        ("sub-001_MPRAGE.nii.gz", "T1w"),
        ("BRATS_001_0000.nii.gz", 0),
        ("case_0003.nii", 3),
        ("sub-001_flair.nii.gz", None),  # BIDS writes FLAIR in capitals
        ("sub-001_T1w.mgz", None),  # not NIfTI
        ("T1w.nii.gz", None),  # no entity before the suffix
        ("brain.nii.gz", None),
        ("sub-001_desc-lesion_mask.nii.gz", None),
        ("sub-0001.nii.gz", None),  # a subject number, not an nnU-Net channel
    ],
)
def test_channel_of_file(name: str, expected: str | int | None) -> None:
    assert channel_of_file(name) == expected


def test_swapped_bids_files_are_refused_naming_files_and_the_model_order() -> None:
    files = ["sub-001_T1w.nii.gz", "sub-001_FLAIR.nii.gz"]
    with pytest.raises(ImageError) as caught:
        check_channel_files(files, ["FLAIR", "T1w"], model="unet")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("sub-001_T1w.nii.gz, sub-001_FLAIR.nii.gz: ")
    assert "say the channels are T1w, FLAIR" in message
    assert "model 'unet' takes FLAIR, T1w in this order" in message
    assert "--ignore-channel-names" in message


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["a_FLAIR.nii.gz", "a_T1w.nii.gz"], ["FLAIR", "T1w"]),
        (["a_FLAIR.nii.gz", "a_T1w.nii.gz"], ["T2-FLAIR", "MPRAGE"]),  # synonyms of the card
        (["a_FLAIR.nii.gz", "a_MPRAGE.nii.gz"], ["flair", "T1"]),
        (["a_T2w.nii.gz", "a_PD.nii.gz"], ["T2", "PDw"]),
        (["one.nii.gz", "two.nii.gz"], ["T1w", "FLAIR"]),  # names saying nothing
        (["a_T1w.nii.gz", "a_FLAIR.nii.gz"], ["ch0", "ch1"]),  # a card naming no contrast
        (["a_T1w.nii.gz", "b.nii.gz"], ["image", "other"]),
        (["x_0000.nii.gz", "x_0001.nii.gz"], ["T1", "T2"]),
        (["x_0001.nii.gz", "y_0000.nii.gz"], ["T1", "T2"]),  # two cases: not nnU-Net channels
        (["a_T1w.nii.gz"], ["FLAIR", "T1w"]),  # a count mismatch is refused elsewhere
    ],
)
def test_consistent_or_silent_names_pass(files: list[str], expected: list[str]) -> None:
    check_channel_files(files, expected, model="m")


@pytest.mark.parametrize(
    ("files", "expected", "said"),
    [
        (["a_T1w.nii.gz", "a_FLAIR.nii.gz"], ["T2-FLAIR", "MPRAGE"], "T1w, FLAIR"),
        (["a_FLAIR.nii.gz", "a_T2w.nii.gz"], ["FLAIR", "T1w"], "FLAIR, T2w"),
        (["a_FLAIR.nii.gz", "a_FLAIR.nii"], ["FLAIR", "T1w"], "FLAIR, FLAIR"),
        (["a_T1w.nii.gz", "b.nii.gz"], ["FLAIR", "T1w"], "T1w, (unnamed)"),
    ],
)
def test_contradicting_names_are_refused(files: list[str], expected: list[str], said: str) -> None:
    with pytest.raises(ImageError, match=re.escape(f"say the channels are {said}, but model 'm'")):
        check_channel_files(files, expected, model="m")


def test_swapped_nnunet_numbers_are_refused_with_the_dataset_order() -> None:
    with pytest.raises(ImageError) as caught:
        check_channel_files(["c_0001.nii.gz", "c_0000.nii.gz"], ["T1", "T2"], model="nn")
    message = str(caught.value)
    assert "given in the order 1, 0" in message
    assert "model 'nn' takes T1 (_0000), T2 (_0001)" in message


def test_declared_channel_names_without_loading(tmp_path: Path) -> None:
    assert declared_channel_names("unet") == ("FLAIR", "T1w")
    weights = tmp_path / "net.pt"
    weights.write_bytes(b"not read")
    weights.with_suffix(".json").write_text(json.dumps({"channel_names": ["T1w", "FLAIR"]}))
    assert declared_channel_names(str(weights)) == ("T1w", "FLAIR")
    assert declared_channel_names(f"pkg.mod:make={weights}") == ("T1w", "FLAIR")
    nnunet = tmp_path / "Dataset001" / "fold_0"
    nnunet.mkdir(parents=True)
    (nnunet.parent / "dataset.json").write_text(
        json.dumps({"channel_names": {"1": "T2", "0": "T1"}})
    )
    (nnunet.parent / "plans.json").write_text("{}")  # with dataset.json: an nnU-Net folder
    assert declared_channel_names(str(nnunet)) == ("T1", "T2")
    assert declared_channel_names(str(nnunet.parent)) == ("T1", "T2")
    assert declared_channel_names(str(tmp_path / "elsewhere.pt")) is None
    (tmp_path / "bad.json").write_text("{")
    assert declared_channel_names(str(tmp_path / "bad.pt")) is None


def _probe(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    probe = (
        "import sys\n"
        "from instasal.cli import main\n"
        "sys.argv = ['instasal', *sys.argv[1:]]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code, 'torch' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe, *arguments], capture_output=True, text=True, timeout=120
    )


def test_cli_explain_refuses_swapped_channels_before_importing_torch(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    write_linear_subject(tmp_path, "sub-001", rng)
    anat = tmp_path / "sub-001" / "anat"
    swapped = [str(anat / "sub-001_T1w.nii.gz"), str(anat / "sub-001_FLAIR.nii.gz")]
    for command in (["explain", *swapped], ["segment", *swapped]):
        done = _probe([*command, "--out", str(tmp_path / "out")])
        assert done.stdout.strip() == "exit 2 False", done.stderr
        assert done.stderr.count("\n") == 1
        assert "sub-001_T1w.nii.gz, sub-001_FLAIR.nii.gz: the file names say" in done.stderr
        assert "model 'unet' takes FLAIR, T1w in this order" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_dataset_commands_refuse_a_model_taking_another_order(
    tmp_path: Path, rng: np.random.Generator, linear_model_path: Path
) -> None:
    write_linear_subject(tmp_path / "data", "sub-01", rng)
    card = json.loads(linear_model_path.with_suffix(".json").read_text())
    card["channel_names"] = ["T1w", "FLAIR"]
    linear_model_path.with_suffix(".json").write_text(json.dumps(card))
    data, model = str(tmp_path / "data"), str(linear_model_path)
    for command in (
        ["cohort", data, "--out", str(tmp_path / "c"), "--model", model],
        ["evaluate", data, "--out", str(tmp_path / "v"), "--model", model],
        ["experiment", "context", data, "--out", str(tmp_path / "e"), "--model", model],
    ):
        done = _probe(command)
        assert done.stdout.strip() == "exit 2 False", (command, done.stderr)
        assert "sub-01_FLAIR.nii.gz, sub-01_T1w.nii.gz: the file names say" in done.stderr
        assert f"model {model!r} takes T1w, FLAIR" in done.stderr


def test_api_refuses_swapped_files_and_ignore_channel_names_overrides(
    tmp_path: Path, rng: np.random.Generator, linear_model_path: Path
) -> None:
    from instasal.models import load_model
    from instasal.models.segmentation import segment_subject
    from instasal.pipeline import ExplainSettings, explain_subject
    from instasal.pipeline.cohort import run_cohort

    write_linear_subject(tmp_path / "data", "sub-01", rng)
    anat = tmp_path / "data" / "sub-01" / "anat"
    swapped = [anat / "sub-01_T1w.nii.gz", anat / "sub-01_FLAIR.nii.gz"]
    model = load_model(linear_model_path)
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None, n_true_negatives=0, context="full"
    )
    with pytest.raises(ImageError, match="say the channels are T1w, FLAIR"):
        explain_subject(swapped, model, tmp_path / "x", settings=settings, progress=None)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ImageError, match="say the channels are T1w, FLAIR"):
        segment_subject(list(swapped), model, tmp_path / "s")
    result = segment_subject(list(swapped), model, tmp_path / "s", ignore_channel_names=True)
    assert result.probability_path.exists()
    explained = explain_subject(
        swapped,
        model,
        tmp_path / "x",
        settings=settings,
        progress=None,
        report=False,
        ignore_channel_names=True,
    )
    assert explained.layout.table.exists()

    card = json.loads(linear_model_path.with_suffix(".json").read_text())
    linear_model_path.with_suffix(".json").write_text(
        json.dumps(card | {"channel_names": ["T1w", "FLAIR"]})
    )
    with pytest.raises(ImageError, match="model 'linear' takes T1w, FLAIR"):
        run_cohort(tmp_path / "data", str(linear_model_path), tmp_path / "c", settings=settings)
    assert not (tmp_path / "c").exists()
