"""nnU-Net v2 trained-model folders written by nnunetv2's own planning, training, checkpoint code.

A tiny raw dataset is planned and preprocessed by ``nnunetv2.experiment_planning`` and trained for
one one-iteration epoch by ``nnUNetTrainer.run_training`` (fold ``all``), in a subprocess because
nnU-Net reads its folders from environment variables at import time. The loaded model is then
compared with nnU-Net's own predictor on the same voxels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instasal.errors import ModelError
from instasal.io import zscore_nonzero
from instasal.models import card_of, load_model, predict_logits

nnunetv2 = pytest.importorskip("nnunetv2")

pytestmark = pytest.mark.slow

DATASET = "Dataset901_Tiny"
MAKE_ARTEFACT = r"""
import json, os, sys
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
    plans["continue_training"] = False  # what nnU-Net's run_training entry point sets
    trainer = nnUNetTrainer(plans, "3d_fullres", "all", dataset, device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = 1
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()
    assert "torchvision" not in sys.modules


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
"""


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nnunet")
    script = root / "make_artefact.py"
    script.write_text(MAKE_ARTEFACT)
    environment = os.environ | {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_n_proc_DA": "1",
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(root)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    folder = root / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (folder / "fold_all" / "checkpoint_final.pth").is_file()
    return folder


def test_card_keeps_nnunet_preprocessing(trained_folder: Path) -> None:
    model = load_model(trained_folder)
    card = card_of(model)
    plans = json.loads((trained_folder / "plans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    assert card.architecture == "nnunetv2"
    assert card.channel_names == ("FLAIR", "T1w")
    assert card.out_channels == 2 and card.output_activation == "softmax"
    assert card.normalisation == "zscore_nonzero"  # masked z-score on both channels
    # nnU-Net's (z, y, x) order reversed into ours
    assert card.patch_size == tuple(reversed(configuration["patch_size"]))
    assert card.spacing_mm == tuple(reversed(configuration["spacing"]))
    assert card.preprocessing["normalization_schemes"] == ["ZScoreNormalization"] * 2
    assert card.gradcam_layer in dict(model.named_modules())
    assert card.hyperparameters["trainer"] == "nnUNetTrainer"


def test_network_agrees_with_nnunet_predictor(trained_folder: Path) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = load_model(trained_folder / "fold_all")
    card = card_of(model)
    plans = PlansManager(json.loads((trained_folder / "plans.json").read_text()))
    dataset = json.loads((trained_folder / "dataset.json").read_text())
    configuration = plans.get_configuration("3d_fullres")
    network = nnUNetTrainer.build_network_architecture(
        plans, configuration, 2, 2, enable_deep_supervision=False
    )
    checkpoint = torch.load(
        trained_folder / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False
    )
    network.load_state_dict(checkpoint["network_weights"])
    # one window covers the subject, where Gaussian blending is the identity for us; nnU-Net's
    # float16 product of logits and the Gaussian's tiny border weights underflows there instead
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=False, use_mirroring=False, device=torch.device("cpu")
    )
    predictor.manual_initialization(
        network,
        plans,
        configuration,
        [checkpoint["network_weights"]],
        dataset,
        "nnUNetTrainer",
        None,
    )
    # a skull-stripped, patch-sized, non-symmetric subject in our (i, j, k) order
    rng = np.random.default_rng(3)
    assert card.patch_size is not None
    shape = card.patch_size
    image = np.zeros((2, *shape), np.float32)
    image[:, 1:-1, 1:-1, 1:-1] = 1 + 0.2 * rng.standard_normal((2, *[s - 2 for s in shape]))
    image[0, 3:7, 4:9, 5:8] += 2.0
    spacing = list(card.spacing_mm or (2.0, 2.0, 2.0))
    nnunet_array = np.ascontiguousarray(image.transpose(0, 3, 2, 1))  # (c, z, y, x)
    preprocessor = configuration.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(
        nnunet_array, None, {"spacing": list(reversed(spacing))}, plans, configuration, dataset
    )
    theirs = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
    box = [slice(low, high) for low, high in properties["bbox_used_for_cropping"]]
    ours = predict_logits(model, torch.from_numpy(zscore_nonzero(image)))
    ours_cropped = ours.transpose(0, 3, 2, 1)[(slice(None), *box)]  # nnU-Net crops to non-zero
    assert ours_cropped.shape == tuple(theirs.shape)
    # nnU-Net accumulates logits in float16 (ENVIRONMENT.md): equal to half-precision round-off
    np.testing.assert_allclose(ours_cropped, theirs.numpy(), rtol=2e-3, atol=2e-3)


def test_fold_choice_and_bad_checkpoints(trained_folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "trained"
    shutil.copytree(trained_folder, copy)
    shutil.copytree(copy / "fold_all", copy / "fold_0")
    with pytest.raises(ModelError, match=r"2 folds \(fold_0, fold_all\); pass one fold folder"):
        load_model(copy)
    assert card_of(load_model(copy / "fold_0")).hyperparameters["fold"] == "fold_0"
    checkpoint = copy / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth: corrupt or unreadable nnU-Net"):
        load_model(copy / "fold_0")
    checkpoint.unlink()
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth: checkpoint not found"):
        load_model(copy / "fold_0")
