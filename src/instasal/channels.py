"""Which channel an image file holds, by its name, checked against a model's channel order.

Two naming schemes say it: BIDS suffixes (``sub-001_acq-3d_FLAIR.nii.gz``: the last ``_`` part of
the name, written as BIDS writes it) and nnU-Net's channel numbers (``case_0000.nii.gz``,
``case_0001.nii.gz``: the position in the model's ``dataset.json``). A file name carrying neither
says nothing and is accepted as given. Nothing here imports torch, so the command line checks the
files before loading a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from instasal.errors import ImageError, ModelError
from instasal.model_sources import model_source, weights_folder
from instasal.typing import PathLike

__all__ = [
    "BIDS_ANATOMICAL_SUFFIXES",
    "canonical_channel",
    "channel_of_file",
    "check_channel_files",
    "declared_channel_names",
    "subject_name",
]

BIDS_ANATOMICAL_SUFFIXES: tuple[str, ...] = (
    "T1w",
    "T2w",
    "PDw",
    "T2starw",
    "FLAIR",
    "inplaneT1",
    "inplaneT2",
    "PDT2",
    "angio",
    "T1map",
    "T2map",
    "T2starmap",
    "R1map",
    "R2map",
    "R2starmap",
    "PDmap",
    "MTRmap",
    "MTsat",
    "UNIT1",
    "T1rho",
    "MWFmap",
    "MTVmap",
    "Chimap",
    "S0map",
    "M0map",
    "T2star",  # deprecated BIDS suffixes, still common
    "FLASH",
    "PD",
)
"""The anatomical suffixes of the BIDS specification (modality-agnostic files excluded)."""

# file suffixes that are not BIDS but name one contrast unambiguously
_OTHER_SUFFIXES = {"MPRAGE": "T1w"}
# spellings of one contrast, compared after lower-casing and dropping punctuation
_CHANNEL_ALIASES = {
    "t1": "t1w",
    "mprage": "t1w",
    "t1mprage": "t1w",
    "t2": "t2w",
    "pd": "pdw",
    "t2star": "t2starw",
    "t2flair": "flair",
    "flairt2": "flair",
}
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
_OVERRIDE = "pass --ignore-channel-names / ignore_channel_names=True if the names are wrong"


def canonical_channel(name: str) -> str:
    """One spelling per contrast: lower case, no punctuation, T1 = MPRAGE = T1w, T2 = T2w, ….

    >>> canonical_channel("T2-FLAIR"), canonical_channel("MPRAGE")
    ('flair', 't1w')
    """
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _CHANNEL_ALIASES.get(key, key)


_KNOWN_CONTRASTS = frozenset(canonical_channel(s) for s in BIDS_ANATOMICAL_SUFFIXES)


def _stem(path: Path) -> str | None:
    for extension in _NIFTI_EXTENSIONS:
        if path.name.endswith(extension):
            return path.name[: -len(extension)]
    return None


def channel_of_file(path: PathLike) -> str | int | None:
    """The channel a NIfTI file's name declares: a BIDS suffix, an nnU-Net number, or ``None``.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file name (the file is not opened).

    Returns
    -------
    str, int or None
        The BIDS suffix (``"FLAIR"``; the non-BIDS ``_MPRAGE`` reads as ``"T1w"``), the nnU-Net
        channel number (``1`` for ``case_0001.nii.gz``), or ``None`` when the name says neither.

    Examples
    --------
    >>> channel_of_file("sub-01_ses-2_acq-sag_FLAIR.nii.gz"), channel_of_file("brats_0001.nii")
    ('FLAIR', 1)
    >>> channel_of_file("sub-01_flair.nii.gz") is None  # BIDS writes FLAIR in capitals
    True
    """
    stem = _stem(Path(path))
    if stem is None:
        return None
    numbered = _NNUNET_NAME.match(stem)
    if numbered is not None:
        return int(numbered["index"])
    suffix = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    if suffix in BIDS_ANATOMICAL_SUFFIXES:
        return suffix
    return _OTHER_SUFFIXES.get(suffix)


_LOOSE_CHANNEL_SUFFIX = re.compile(r"_(flair|t1w|t2w|pd|pdw|t1|t2|mprage|ch\d+)$", re.IGNORECASE)
"""Channel endings that are not BIDS (lower case, ``_T1``, ``_ch0``) but name a channel all the
same: stripped from subject names too."""


def subject_name(path: PathLike | None) -> str:
    """The subject's name in output files: the image file's name without its extension and
    without the channel it declares (a BIDS suffix such as ``_FLAIR``, ``_MPRAGE``, an nnU-Net
    channel number such as ``_0000``, or a loose ``_t1``/``_ch0``); ``"subject"`` without a
    file or when nothing is left.

    >>> subject_name("sub-01_ses-2_FLAIR.nii.gz"), subject_name("case_012_0000.nii.gz")
    ('sub-01_ses-2', 'case_012')
    >>> subject_name("scan.nii"), subject_name("patient7_flair.nii.gz"), subject_name(None)
    ('scan', 'patient7', 'subject')
    """
    if path is None:
        return "subject"
    name = Path(path).name
    stem = _stem(Path(path)) or name
    if channel_of_file(name) is not None:
        stem = stem.rsplit("_", 1)[0]
    else:
        stem = _LOOSE_CHANNEL_SUFFIX.sub("", stem)
    return stem or "subject"


def check_channel_files(
    paths: Sequence[PathLike], expected: Sequence[str], *, model: str = "the model"
) -> None:
    """Refuse channel files whose names say they are not in ``expected``'s order.

    BIDS suffixes are compared with the expected names (:func:`canonical_channel`; an expected
    name that is no known contrast, such as ``ch0``, is not compared). nnU-Net numbers are
    compared with the positions, when every file carries one and all share one case name. Files
    whose names say nothing, and a count of files other than ``len(expected)`` (refused elsewhere),
    pass.

    Raises
    ------
    ImageError
        One line naming the files, what their names say and the order ``model`` takes.

    Examples
    --------
    >>> check_channel_files(["s_T1w.nii.gz", "s_FLAIR.nii.gz"], ["FLAIR", "T1w"], model="unet")
    Traceback (most recent call last):
    ...
    instasal.errors.ImageError: s_T1w.nii.gz, s_FLAIR.nii.gz: the file names say the channels are \
T1w, FLAIR, but model 'unet' takes FLAIR, T1w in this order; give the images in that order \
(pass --ignore-channel-names / ignore_channel_names=True if the names are wrong)
    """
    files = [Path(p) for p in paths]
    if len(files) != len(expected) or len(files) < 2:
        return
    labels = [channel_of_file(p) for p in files]
    listed = ", ".join(p.name for p in files)
    order = ", ".join(expected)
    numbers = [label for label in labels if isinstance(label, int)]
    cases = {_NNUNET_NAME.match(_stem(p) or "") for p in files}
    if len(numbers) == len(files) and len({m["case"] for m in cases if m}) == 1:
        if numbers != list(range(len(files))):
            wanted = ", ".join(f"{name} (_{k:04d})" for k, name in enumerate(expected))
            raise ImageError(
                f"{listed}: the nnU-Net channel numbers say the channels are given in the order "
                f"{', '.join(map(str, numbers))}, but model {model!r} takes {wanted}; give the "
                f"images in that order ({_OVERRIDE})"
            )
        return
    mismatched = any(
        isinstance(label, str)
        and canonical_channel(want) in _KNOWN_CONTRASTS
        and canonical_channel(label) != canonical_channel(want)
        for label, want in zip(labels, expected, strict=True)
    )
    if mismatched:
        said = ", ".join(label if isinstance(label, str) else "(unnamed)" for label in labels)
        raise ImageError(
            f"{listed}: the file names say the channels are {said}, but model {model!r} takes "
            f"{order} in this order; give the images in that order ({_OVERRIDE})"
        )


def declared_channel_names(model: str) -> tuple[str, ...] | None:
    """The channel names a model declares in a JSON file, read without loading it (or torch).

    Read from the built-in card (``instasal/weights/<name>.json``), the card beside a weights or
    TorchScript file (``<file stem>.json``, also for ``module:factory=weights.pt``), or an nnU-Net
    folder's ``dataset.json`` (also from one of its ``fold_X`` folders). ``None`` when none of
    these states them (the loaded model's card is checked later), also for a model that
    :func:`instasal.model_sources.model_source` refuses (which says why in its own message).
    """
    try:
        source = model_source(model)
    except ModelError:
        return None
    if source.kind == "bundle":
        return None
    if source.kind == "builtin":
        card = weights_folder() / f"{source.path.name}.json"
    elif source.kind == "nnunet":
        root = source.path.parent if source.path.name.startswith("fold_") else source.path
        card = root / "dataset.json"
    else:
        card = source.path.with_suffix(".json")
    return _names_in(card.read_text(encoding="utf-8")) if card.is_file() else None


def _names_in(text: str) -> tuple[str, ...] | None:
    """``channel_names`` of a card (a list) or of nnU-Net's ``dataset.json`` (``{"0": name}``)."""
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    names = payload.get("channel_names") if isinstance(payload, dict) else None
    if isinstance(names, dict) and all(str(k).isdigit() for k in names):
        names = [names[k] for k in sorted(names, key=int)]
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None
