#!/usr/bin/env python
"""Train an nnU-Net v2 folder on phantom subjects with nnU-Net's own planner and trainer.

The folder is a user's artefact in every respect but its size: ``nnunetv2`` extracts the
fingerprint, plans (with ``--gpu-memory-gb`` as its memory target, which is how nnU-Net is told
to plan a smaller patch and network), preprocesses and trains ``nnUNetTrainer`` on fold ``all``.
Only the epoch count, iterations per epoch and the checkpoint interval are set here, so a CPU can
train it in minutes rather than days. Used to measure instasal on an nnU-Net folder that finds
lesions (``scripts/cost_estimate.py --models <folder>``).

Resumable: run the same command again and training continues from ``checkpoint_latest.pth``.

Usage::

    python scripts/train_nnunet_phantoms.py --out runs/nnunet_phantoms [--subjects 8] [--seed 1]
        [--epochs 8] [--iterations 50] [--gpu-memory-gb 0.5]

The trained folder is ``<out>/results/Dataset902_Phantoms/nnUNetTrainer__nnUNetPlans__3d_fullres``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DATASET = "Dataset902_Phantoms"
DATASET_ID = 902

# run in a child process: nnU-Net reads its folders from the environment when it is imported
TRAIN = r"""
import json, os, sys
from pathlib import Path

import torch


def main(root, gpu_memory_gb, epochs, iterations):
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = root / "preprocessed" / DATASET
    if not (preprocessed / "nnUNetPlans_3d_fullres").is_dir():
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
        plan_experiments([DATASET_ID], gpu_memory_target_in_gb=gpu_memory_gb)
        preprocess([DATASET_ID], configurations=("3d_fullres",), num_processes=(1,))
    # the planner needs a positive worker count; training loads its batches in this process
    os.environ["nnUNet_n_proc_DA"] = "0"
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, "3d_fullres", "all", dataset, device=torch.device("cpu"))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = 5
    trainer.save_every = 1
    folder = Path(trainer.output_folder)
    if (folder / "checkpoint_final.pth").is_file():
        return
    if (folder / "checkpoint_latest.pth").is_file():
        trainer.load_checkpoint(str(folder / "checkpoint_latest.pth"))
    trainer.run_training()
    assert "torchvision" not in sys.modules


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
"""


def write_raw(cohort: Path, raw: Path) -> int:
    """Copy a phantom cohort into nnU-Net's raw layout (FLAIR ``_0000``, T1w ``_0001``)."""
    from instasal.dataset import discover_dataset

    images = raw / "imagesTr"
    labels = raw / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    subjects = discover_dataset(cohort)
    for subject in subjects:
        case = subject.subject_id.replace("-", "")
        for channel, image in enumerate(subject.images):
            shutil.copyfile(image, images / f"{case}_{channel:04d}.nii.gz")
        assert subject.lesion_mask is not None, subject.subject_id
        shutil.copyfile(subject.lesion_mask, labels / f"{case}.nii.gz")
    dataset = {
        "channel_names": {"0": "FLAIR", "1": "T1w"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": len(subjects),
        "file_ending": ".nii.gz",
        "name": DATASET,
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return len(subjects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--gpu-memory-gb", type=float, default=0.5)
    args = parser.parse_args()
    from instasal.phantoms import write_cohort

    root = args.out.resolve()
    cohort = root / "cohort"
    if not cohort.exists():
        write_cohort(cohort, n_subjects=args.subjects, seed=args.seed)
    raw = root / "raw" / DATASET
    if not (raw / "dataset.json").is_file():
        print(f"{write_raw(cohort, raw)} subjects in {raw}", flush=True)
    script = root / "train_nnunet.py"
    script.write_text(
        f"DATASET = {DATASET!r}\nDATASET_ID = {DATASET_ID}\n" + TRAIN,
    )
    environment = os.environ | {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_n_proc_DA": "1",
    }
    command = [sys.executable, str(script), str(root), str(args.gpu_memory_gb)]
    command += [str(args.epochs), str(args.iterations)]
    subprocess.run(command, env=environment, check=True)
    folder = root / "results" / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    print(f"trained folder: {folder}")


if __name__ == "__main__":
    main()
