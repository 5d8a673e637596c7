"""Finding subjects in a BIDS-like dataset: the phantom cohort's layout, or a user's.

::

    ROOT/sub-XXX/anat/sub-XXX[_entities]_FLAIR.nii.gz        one file per channel
    ROOT/sub-XXX/anat/sub-XXX[_entities]_T1w.nii.gz
    ROOT/derivatives/<pipeline>/sub-XXX/anat/sub-XXX[_entities]_desc-lesion_mask.nii.gz
    ROOT/derivatives/<pipeline>/sub-XXX/anat/..._desc-brain_mask / _desc-wm_mask
    ROOT/derivatives/<pipeline>/sub-XXX/anat/..._desc-lesionregion_dseg

``.nii`` works as well as ``.nii.gz``. Sessions (``sub-XXX/ses-YY/anat``) are not searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from instasal.errors import ImageError
from instasal.io import DEFAULT_CHANNELS
from instasal.typing import LesionRegion, PathLike

__all__ = ["DERIVATIVE_SUFFIXES", "REGION_LABELS", "SubjectFiles", "discover_dataset"]

REGION_LABELS: dict[LesionRegion, int] = {
    "periventricular": 1,
    "juxtacortical": 2,
    "deep": 3,
    "infratentorial": 4,
}
"""The labels of a region map (``desc-lesionregion_dseg``, ``desc-regions_dseg``; 0: no region),
by region name: the phantoms write them, the lesion table's ``region`` column reads them back."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
DERIVATIVE_SUFFIXES: dict[str, str] = {
    "lesion_mask": "desc-lesion_mask",
    "brain_mask": "desc-brain_mask",
    "wm_mask": "desc-wm_mask",
    "regions": "desc-lesionregion_dseg",
    "region_atlas": "desc-regions_dseg",
}


@dataclass(frozen=True)
class SubjectFiles:
    """The files of one subject.

    Attributes
    ----------
    subject_id
        BIDS participant id (``sub-001``).
    images
        One file per channel, in the requested channel order (FLAIR then T1w by default).
    lesion_mask, brain_mask, wm_mask, regions, region_atlas
        Derivative masks, ``None`` where absent. ``regions`` labels the reference lesions' voxels
        with their region; ``region_atlas`` labels every brain voxel (so false positives and
        missed-lesion candidates get a region too).
    """

    subject_id: str
    images: tuple[Path, ...]
    lesion_mask: Path | None = None
    brain_mask: Path | None = None
    wm_mask: Path | None = None
    regions: Path | None = None
    region_atlas: Path | None = None

    @property
    def region_map(self) -> Path | None:
        """The best region label map: the whole-brain atlas, else the lesion-region map."""
        return self.region_atlas or self.regions


def _matches(folder: Path, participant: str, suffix: str) -> list[Path]:
    """Files ``participant[_entities]_suffix.nii(.gz)`` in ``folder``, sorted."""
    found: list[Path] = []
    for extension in _NIFTI_SUFFIXES:
        exact = folder / f"{participant}_{suffix}{extension}"
        if exact.is_file():
            found.append(exact)
        found.extend(
            path for path in folder.glob(f"{participant}_*_{suffix}{extension}") if path.is_file()
        )
    return sorted(set(found))


def _channel_file(folder: Path, participant: str, channel: str) -> Path:
    found = _matches(folder, participant, channel)
    if not found:
        raise ImageError(
            f"{folder}: subject {participant} has no {channel} image "
            f"(expected {participant}_{channel}.nii.gz)"
        )
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise ImageError(
            f"{folder}: subject {participant} has {len(found)} {channel} images ({names}); "
            "keep one per channel"
        )
    return found[0]


def _derivative(root: Path, participant: str, suffix: str) -> Path | None:
    """The first (by pipeline name) derivative file of ``participant`` with ``suffix``."""
    derivatives = root / "derivatives"
    if not derivatives.is_dir():
        return None
    for pipeline in sorted(path for path in derivatives.iterdir() if path.is_dir()):
        found = _matches(pipeline / participant / "anat", participant, suffix)
        if found:
            return found[0]
    return None


def discover_dataset(
    root: PathLike, channels: Sequence[str] = DEFAULT_CHANNELS
) -> list[SubjectFiles]:
    """Find every subject of a BIDS-like dataset, with its channel images and derivative masks.

    Parameters
    ----------
    root
        Dataset folder (holding ``sub-*`` folders and, optionally, ``derivatives``).
    channels
        BIDS suffixes of the channels, in model order.

    Returns
    -------
    list of SubjectFiles
        Sorted by subject id. Where several derivative pipelines hold a mask, the first by
        pipeline folder name is taken.

    Raises
    ------
    ImageError
        When ``root`` is missing or not a folder, holds no ``sub-*`` folder, or a subject lacks a
        channel image (or has several); the message names the folder.

    Examples
    --------
    >>> subjects = discover_dataset("phantoms")  # doctest: +SKIP
    >>> subjects[0].images  # doctest: +SKIP
    (PosixPath('phantoms/sub-001/anat/sub-001_FLAIR.nii.gz'), PosixPath('.../sub-001_T1w.nii.gz'))
    """
    if (
        isinstance(channels, str)
        or not channels
        or not all(isinstance(channel, str) and channel for channel in channels)
    ):
        raise ImageError(f"channels must be a non-empty sequence of names, got {channels!r}")
    root = Path(root)
    if not root.exists():
        raise ImageError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise ImageError(f"{root}: is a file, expected a dataset folder")
    participants = sorted(
        path.name for path in root.iterdir() if path.is_dir() and path.name.startswith("sub-")
    )
    if not participants:
        raise ImageError(
            f"{root}: no subject found (expected sub-*/anat/sub-*_{channels[0]}.nii.gz)"
        )
    subjects: list[SubjectFiles] = []
    for participant in participants:
        anat = root / participant / "anat"
        images = tuple(_channel_file(anat, participant, channel) for channel in channels)
        masks = {
            field: _derivative(root, participant, suffix)
            for field, suffix in DERIVATIVE_SUFFIXES.items()
        }
        subjects.append(SubjectFiles(subject_id=participant, images=images, **masks))
    return subjects
