"""Writing a phantom cohort in a BIDS-like layout that real data can share.

::

    OUT/dataset_description.json
    OUT/participants.tsv
    OUT/phantom_parameters.json
    OUT/sub-001/anat/sub-001_FLAIR.nii.gz
    OUT/sub-001/anat/sub-001_T1w.nii.gz
    OUT/derivatives/instasal-phantom/dataset_description.json
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_desc-lesion_mask.nii.gz
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_desc-brain_mask.nii.gz
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_desc-wm_mask.nii.gz
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_desc-lesionregion_dseg.nii.gz
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_desc-regions_dseg.nii.gz
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_desc-mimic_mask.nii.gz
    OUT/derivatives/instasal-phantom/sub-001/anat/sub-001_lesions.tsv

Every file is written atomically (:mod:`instasal.io`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from instasal.errors import ConfigurationError, OutputExistsError
from instasal.io import atomic_write_json, atomic_write_text, write_nifti
from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.subject import PhantomSubject, generation_parameters, make_phantom
from instasal.phantoms.subject_v2 import generation_parameters_v2
from instasal.provenance import instasal_version
from instasal.typing import Generator, PathLike, Progress, Resolution, check_seed

__all__ = [
    "DERIVATIVES_NAME",
    "subject_files",
    "subject_id",
    "subject_seeds",
    "write_cohort",
    "write_subject",
]

DERIVATIVES_NAME = "instasal-phantom"
_BIDS_VERSION = "1.9.0"


def subject_id(index: int) -> str:
    """BIDS participant id of the 0-based subject ``index``: ``sub-001``, ``sub-002``, …"""
    return f"sub-{index + 1:03d}"


def subject_seeds(seed: int, n_subjects: int) -> list[int]:
    """Per-subject seeds, derived from ``(seed, index)`` by :class:`numpy.random.SeedSequence`.

    Subject ``i``'s seed depends on ``seed`` and ``i`` only, so a larger cohort with the same seed
    starts with the same subjects.
    """
    children = np.random.SeedSequence(seed).spawn(n_subjects)
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in children]


def subject_files(out: Path, participant: str) -> dict[str, Path]:
    """The paths of one subject's files in the cohort layout, keyed by kind."""
    anat = out / participant / "anat"
    derived = out / "derivatives" / DERIVATIVES_NAME / participant / "anat"
    return {
        "FLAIR": anat / f"{participant}_FLAIR.nii.gz",
        "T1w": anat / f"{participant}_T1w.nii.gz",
        "lesion_mask": derived / f"{participant}_desc-lesion_mask.nii.gz",
        "brain_mask": derived / f"{participant}_desc-brain_mask.nii.gz",
        "wm_mask": derived / f"{participant}_desc-wm_mask.nii.gz",
        "regions": derived / f"{participant}_desc-lesionregion_dseg.nii.gz",
        "region_atlas": derived / f"{participant}_desc-regions_dseg.nii.gz",
        "mimic_mask": derived / f"{participant}_desc-mimic_mask.nii.gz",
        "lesions": derived / f"{participant}_lesions.tsv",
    }


def _tsv(header: list[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_subject(
    subject: PhantomSubject, out: Path, participant: str, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write one phantom subject's images, masks and lesion table into the cohort layout."""
    files = subject_files(out, participant)
    images = {
        "FLAIR": subject.flair,
        "T1w": subject.t1w,
        "lesion_mask": subject.lesion_mask,
        "brain_mask": subject.brain_mask,
        "wm_mask": subject.wm_mask,
        "regions": subject.lesion_regions.astype(np.uint8),
        "region_atlas": subject.region_atlas.astype(np.uint8),
        "mimic_mask": subject.mimic_mask,
    }
    for kind, data in images.items():
        write_nifti(data, subject.affine, files[kind], overwrite=overwrite)
    rows: list[list[object]] = [
        [
            lesion.id,
            lesion.region,
            f"{lesion.volume_mm3:.1f}",
            ",".join(str(c) for c in lesion.centre),
            f"{lesion.flair_contrast:.4f}",
            str(lesion.faint).lower(),
            f"{lesion.t1w_contrast:.4f}",
        ]
        for lesion in subject.lesions
    ]
    header = ["id", "region", "volume_mm3", "centre", "contrast", "faint", "t1w_contrast"]
    atomic_write_text(files["lesions"], _tsv(header, rows), overwrite=overwrite)
    return files


def _check_arguments(n_subjects: int, seed: int, resolution: int) -> None:
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, int) or n_subjects < 1:
        raise ConfigurationError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    check_seed(seed)
    if resolution not in (1, 2):
        raise ConfigurationError(f"resolution must be 1 or 2 (mm), got {resolution!r}")


def _remove_stale_subjects(out: Path, keep: set[str]) -> None:
    """Delete the files of subjects an earlier cohort in ``out`` listed and this one does not.

    Only this layout's own file names are removed (then their folders, if left empty), so nothing a
    user put there is lost.
    """
    participants = out / "participants.tsv"
    if not participants.is_file():
        return
    with participants.open(newline="") as stream:
        previous = [row.get("participant_id", "") for row in csv.DictReader(stream, delimiter="\t")]
    for participant in previous:
        if not participant.startswith("sub-") or participant in keep or "/" in participant:
            continue
        for path in subject_files(out, participant).values():
            path.unlink(missing_ok=True)
        for folder in (
            out / "derivatives" / DERIVATIVES_NAME / participant / "anat",
            out / "derivatives" / DERIVATIVES_NAME / participant,
            out / participant / "anat",
            out / participant,
        ):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _generator_provenance(generator: Generator, arm: PhantomArm | None) -> dict[str, object]:
    """What ``phantom_parameters.json`` says about the generator (v1: as it always did)."""
    if generator == "v1":
        return {"generator": generation_parameters()}
    return {
        "generator_version": "v2",
        "arm": dataclasses.asdict(arm or PhantomArm()),
        "generator": generation_parameters_v2(),
    }


def write_cohort(
    out: PathLike,
    n_subjects: int,
    *,
    seed: int = 0,
    resolution: Resolution = 2,
    overwrite: bool = False,
    progress: Progress | None = None,
    generator: Generator = "v1",
    arm: PhantomArm | None = None,
) -> list[Path]:
    """Generate ``n_subjects`` phantom subjects and write them as a BIDS-like cohort.

    Parameters
    ----------
    out
        Cohort folder; created if missing.
    n_subjects
        Number of subjects (``sub-001`` …).
    seed
        Cohort seed; subject ``i`` is ``make_phantom(subject_seeds(seed, n)[i])``.
    resolution
        Voxel size in mm, 1 or 2.
    overwrite
        Replace an existing cohort's files (and drop subjects it had beyond this one's).
    progress
        Called after each subject as ``progress("phantom of <participant_id>", done, total)``.
    generator, arm
        ``"v1"`` (default) or ``"v2"`` with its arm (docs/phantoms.md §v2); v2 cohorts record the
        arm and each subject's anatomy and field strength in ``participants.tsv``.

    Returns
    -------
    list of Path
        The subject folders ``OUT/sub-XXX``, in order.

    Raises
    ------
    OutputExistsError
        When ``out`` exists and is not empty, and ``overwrite`` is false.
    ConfigurationError
        When an argument is out of range.

    Examples
    --------
    >>> write_cohort("phantoms", 4, seed=0)  # doctest: +SKIP
    [PosixPath('phantoms/sub-001'), ..., PosixPath('phantoms/sub-004')]
    """
    _check_arguments(n_subjects, seed, resolution)
    # The same checks as make_phantom's, before anything is written.
    make_arguments = {"resolution": resolution, "generator": generator, "arm": arm}
    if generator == "v2":
        arm = arm or PhantomArm()
        make_arguments["arm"] = arm
        if resolution != 2 and (arm.anatomy == "colin27" or not arm.skull_stripped):
            raise ConfigurationError(
                f"Colin27 and the head arm exist at 2 mm only, got resolution {resolution}"
            )
    elif arm is not None:
        raise ConfigurationError(f"arms exist for generator='v2' only, got arm={arm!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out}: cohort folder exists and is not empty (pass overwrite=True / --overwrite)"
        )

    seeds = subject_seeds(seed, n_subjects)
    participants = [subject_id(index) for index in range(n_subjects)]
    if overwrite:
        _remove_stale_subjects(out, set(participants))
    out.mkdir(parents=True, exist_ok=True)
    generated_by = [{"Name": "instasal", "Version": instasal_version()}]
    atomic_write_json(
        out / "dataset_description.json",
        {
            "Name": "instasal phantom MS cohort",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "raw",
            "GeneratedBy": generated_by,
        },
        overwrite=overwrite,
    )
    atomic_write_json(
        out / "derivatives" / DERIVATIVES_NAME / "dataset_description.json",
        {
            "Name": "instasal phantom ground truth",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": generated_by,
        },
        overwrite=overwrite,
    )
    atomic_write_json(
        out / "phantom_parameters.json",
        {
            "instasal_version": instasal_version(),
            "cohort_seed": seed,
            "n_subjects": n_subjects,
            "resolution_mm": resolution,
            "subject_seed_derivation": (
                "numpy SeedSequence(cohort_seed).spawn(n)[i].generate_state(1)"
            ),
            **_generator_provenance(generator, arm),
        },
        overwrite=overwrite,
    )
    rows: list[list[object]] = []
    folders: list[Path] = []
    for index, (participant, subject_seed) in enumerate(zip(participants, seeds, strict=True)):
        subject = make_phantom(subject_seed, **make_arguments)  # type: ignore[arg-type]
        write_subject(subject, out, participant, overwrite=overwrite)
        row: list[object] = [
            participant,
            subject_seed,
            len(subject.lesions),
            f"{subject.lesion_volume_mm3:.1f}",
            resolution,
        ]
        if generator == "v2":
            row += [subject.draws["anatomy"], subject.draws["field_strength"]]
        rows.append(row)
        folders.append(out / participant)
        if progress is not None:
            progress(f"phantom of {participant}", index + 1, n_subjects)
    header = ["participant_id", "seed", "n_lesions", "lesion_volume_mm3", "resolution_mm"]
    if generator == "v2":
        header += ["anatomy", "field_strength"]
    atomic_write_text(out / "participants.tsv", _tsv(header, rows), overwrite=overwrite)
    return folders
