"""nnU-Net v2 artefacts written by nnunetv2's own code, shared by the nnU-Net tests.

A tiny raw dataset is planned and preprocessed by ``nnunetv2.experiment_planning`` and trained
for one one-iteration epoch by ``nnUNetTrainer.run_training``, as fold ``all`` and as folds 0 and 1
(a two-fold ensemble), in a subprocess because nnU-Net reads its folders from environment
variables at import time. ``nnUNetv2_predict`` itself writes the predictions the tests compare
with, on a subject stored flipped at a voxel size nnU-Net resamples.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATASET = "Dataset901_Tiny"
MAKE_ARTEFACT = r"""
import json, os, random, sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def main(root):
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess,
    )

    raw = root / "raw" / "Dataset901_Tiny"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for case in range(2):
        lesion = np.zeros((20, 24, 28), np.uint8)
        lesion[8:12, 10:14, 12 + case : 16 + case] = 1
        brain = np.zeros(lesion.shape, bool)
        brain[2:-2, 2:-2, 2:-2] = True
        flair = brain * (1 + 0.1 * rng.standard_normal(lesion.shape)) + lesion
        t1w = brain * (1 + 0.1 * rng.standard_normal(lesion.shape)) - 0.5 * lesion
        for channel, data in enumerate((flair, t1w)):
            image = nib.Nifti1Image(data.astype(np.float32), affine)
            nib.save(image, raw / "imagesTr" / f"case{case}_{channel:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lesion, affine), raw / "labelsTr" / f"case{case}.nii.gz")
    generate_dataset_json(
        str(raw), {0: "FLAIR", 1: "T1w"}, {"background": 0, "lesion": 1}, 2, ".nii.gz",
        dataset_name="Dataset901_Tiny",
    )
    extract_fingerprints([901], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([901])
    preprocess([901], configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = root / "preprocessed" / "Dataset901_Tiny"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    # two cases: nnU-Net's own five-fold split needs five, so the two folds are written out
    splits = [{"train": ["case0"], "val": ["case1"]}, {"train": ["case1"], "val": ["case0"]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits))
    for seed, fold in enumerate(("all", 0, 1)):
        # nnU-Net does not seed its initialisation, patch sampling and augmentation: seeded here
        # (one seed per fold, so the two folds' networks differ), the folders and so every
        # comparison with them are the same in every test session
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        # what nnU-Net's run_training entry point sets (the trainer pops it from the plans)
        plans["continue_training"] = False
        trainer = nnUNetTrainer(plans, "3d_fullres", fold, dataset, device=torch.device("cpu"))
        trainer.num_epochs = 1
        trainer.num_iterations_per_epoch = 1
        trainer.num_val_iterations_per_epoch = 1
        trainer.run_training()
    assert "torchvision" not in sys.modules


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
"""


# nnUNetv2_predict run as its console script does, except that its trainer-class lookup (which
# imports every trainer module, and so the broken torchvision) returns nnUNetTrainer directly: the
# class the checkpoint names. Nothing else is replaced, so nnU-Net's numerics are its own.
RUN_NNUNET_PREDICT = r"""
import sys

import nnunetv2.inference.predict_from_raw_data as predict_module
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def find_trainer(name, *args, **kwargs):
    assert name == "nnUNetTrainer", name
    return nnUNetTrainer


if __name__ == "__main__":
    predict_module.recursive_find_trainer_class_by_name = find_trainer
    sys.argv = ["nnUNetv2_predict", *sys.argv[1:]]
    predict_module.predict_entry_point()
    assert "torchvision" not in sys.modules
"""
# nnU-Net accumulates the sliding-window logits in float16 (ENVIRONMENT.md); its written
# probabilities and ours come from the same code, so they agree to well within that round-off
# (2**-11 relative on logits of order 1, about 1e-3 on a probability)
FLOAT16_PROBABILITY = 1e-3


def _environment(root: Path) -> dict[str, str]:
    return os.environ | {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_n_proc_DA": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def trained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nnunet")
    script = root / "make_artefact.py"
    script.write_text(MAKE_ARTEFACT)
    completed = subprocess.run(
        [sys.executable, str(script), str(root)],
        env=_environment(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    folder = root / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (folder / "fold_all" / "checkpoint_final.pth").is_file()
    return folder


@pytest.fixture(scope="session")
def flipped_subject(trained_folder: Path) -> Path:
    """A non-symmetric subject at 1.5 × 2 × 2.5 mm (the model's is 2 mm), stored x-flipped."""
    folder = trained_folder.parents[2] / "test_input"
    folder.mkdir()
    shape = (27, 24, 22)
    brain = np.zeros(shape, bool)
    brain[2:-3, 3:-2, 2:-2] = True
    affine = np.array([[-1.5, 0, 0, 40.0], [0, 2.0, 0, -20.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
    lesion = np.zeros(shape, bool)
    lesion[6:13, 7:12, 5:9] = True
    lesion[18:21, 14:17, 12:14] = True
    write_case(folder, brain, lesion, affine, seed=5)
    return folder


def write_case(
    folder: Path, brain: np.ndarray, lesion: np.ndarray, affine: np.ndarray, *, seed: int
) -> None:
    """``case_0000`` (FLAIR: tissue at 1 with 10 % noise, the lesion +1) and ``case_0001`` (T1w:
    the lesion −0.5) in nnU-Net's file naming."""
    rng = np.random.default_rng(seed)
    flair = brain * (1 + 0.1 * rng.standard_normal(brain.shape)) + lesion
    t1w = brain * (1 + 0.1 * rng.standard_normal(brain.shape)) - 0.5 * lesion
    for channel, data in enumerate((flair, t1w)):
        image = nib.Nifti1Image(data.astype(np.float32), affine)
        nib.save(image, folder / f"case_{channel:04d}.nii.gz")


@pytest.fixture(scope="session")
def nnunet_written(trained_folder: Path, flipped_subject: Path) -> dict[bool, tuple[Path, Path]]:
    """``nnUNetv2_predict --save_probabilities`` outputs (probabilities, mask) by TTA on/off."""
    root = trained_folder.parents[2]
    script = root / "run_nnunet_predict.py"
    script.write_text(RUN_NNUNET_PREDICT)
    return {tta: run_nnunet_predict(root, flipped_subject, ["all"], tta) for tta in (True, False)}


@pytest.fixture(scope="session")
def two_folds_written(trained_folder: Path, flipped_subject: Path) -> tuple[Path, Path]:
    """``nnUNetv2_predict -f 0 1 --save_probabilities`` outputs (probabilities, mask)."""
    return run_nnunet_predict(trained_folder.parents[2], flipped_subject, ["0", "1"], True)


def run_nnunet_predict(root: Path, subject: Path, folds: list[str], tta: bool) -> tuple[Path, Path]:
    """Run nnUNetv2_predict on the subject folder; its probabilities and mask files."""
    script = root / "run_nnunet_predict.py"
    script.write_text(RUN_NNUNET_PREDICT)
    out = root / f"predicted_{subject.name}_{'_'.join(folds)}_{'tta' if tta else 'no_tta'}"
    arguments = ["-i", str(subject), "-o", str(out), "-d", DATASET, "-c", "3d_fullres"]
    arguments += ["-f", *folds, "--save_probabilities", "-device", "cpu", "-npp", "1"]
    arguments += ["-nps", "1", "--disable_progress_bar"]
    completed = subprocess.run(
        [sys.executable, str(script), *arguments, *([] if tta else ["--disable_tta"])],
        env=_environment(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out / "case.npz", out / "case.nii.gz"


def subject_files(folder: Path) -> list[Path]:
    """A subject folder's two channel files, as nnUNetv2_predict names them."""
    return [folder / "case_0000.nii.gz", folder / "case_0001.nii.gz"]


def nnunet_probability(written: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's foreground probability and mask, back in the stored (nibabel) array order."""
    probabilities = np.load(written[0])["probabilities"]  # (c, z, y, x) of the stored array
    image = nib.load(written[1])
    assert isinstance(image, nib.Nifti1Image)
    mask = np.asarray(image.dataobj)
    return probabilities[1].transpose(2, 1, 0).astype(np.float32), mask
