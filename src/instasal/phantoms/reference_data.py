"""Reference data shipped for the v2 phantoms: Colin27's head and tissue maps, SAMSEG's prior.

Both files were derived once by scripts (``scripts/derive_colin27.py``,
``scripts/derive_lesion_prior.py``) and carry their provenance inside (``provenance``: JSON with
the sources, their hashes and the method). Nothing here reads the network.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from scipy import ndimage

from instasal.errors import ConfigurationError
from instasal.phantoms.anatomy import (
    TemplateAnatomy,
    load_template_anatomy,
    template_from_maps,
)
from instasal.typing import FloatArray, Resolution

__all__ = [
    "COLIN27_FILE",
    "LESION_PRIOR_FILE",
    "HeadTemplate",
    "load_colin27",
    "load_lesion_prior",
    "reference_provenance",
]

COLIN27_FILE = "colin27_2mm.npz"
LESION_PRIOR_FILE = "samseg_lesion_prior.npz"


def _load(name: str) -> dict[str, np.ndarray]:
    path = resources.files("instasal.phantoms").joinpath("data", name)
    with path.open("rb") as stream, np.load(stream) as archive:
        return {key: archive[key] for key in archive.files}


def reference_provenance() -> dict[str, Any]:
    """The provenance records of both shipped files, keyed by file name."""
    return {
        name: json.loads(str(_load(name)["provenance"]))
        for name in (COLIN27_FILE, LESION_PRIOR_FILE)
    }


@dataclass(frozen=True, eq=False)
class HeadTemplate:
    """A brain template with the whole head around it.

    Attributes
    ----------
    anatomy
        The brain's maps, ventricles and distance maps (as for MNI152).
    head
        Whole-head T1 contrast (white matter ≈ 0.5, air 0) on the same grid.
    """

    anatomy: TemplateAnatomy
    head: FloatArray


@functools.lru_cache(maxsize=1)
def load_colin27(resolution: Resolution = 2) -> HeadTemplate:
    """Colin27 on nilearn's MNI152 2 mm grid: tissue maps and whole head (shipped at 2 mm only).

    Raises
    ------
    ConfigurationError
        For ``resolution`` 1: the 1 mm head alone would be 3.5 MB of package data.
    """
    if resolution != 2:
        raise ConfigurationError(
            f"Colin27 ships at 2 mm only (anatomy='colin27' or skull_stripped=False), "
            f"got resolution {resolution!r}"
        )
    data = _load(COLIN27_FILE)
    maps = {
        "t1": data["brain_t1"].astype(np.float32) / 255.0,
        "grey": data["grey"].astype(np.float32) / 255.0,
        "white": data["white"].astype(np.float32) / 255.0,
        "brain": data["brain"].astype(np.float32) / 255.0,
    }
    anatomy = template_from_maps(maps, np.asarray(data["affine"], dtype=np.float64), 2)
    return HeadTemplate(anatomy=anatomy, head=data["head"].astype(np.float32) / 255.0)


@functools.lru_cache(maxsize=2)
def load_lesion_prior(resolution: Resolution = 2) -> FloatArray:
    """SAMSEG's MS lesion probability (0–0.43) on nilearn's MNI152 grid of ``resolution``.

    Shipped at 2 mm; the 1 mm grid samples it trilinearly (the prior is smooth on a scale of
    centimetres, so nothing is lost).
    """
    prior = _load(LESION_PRIOR_FILE)["prior"].astype(np.float32)
    if resolution == 2:
        return prior
    shape = load_template_anatomy(1).shape
    # 1 mm voxel i sits at 2 mm voxel i / 2 (both grids share their origin).
    coordinates = np.indices(shape, dtype=np.float32) / 2.0
    return np.asarray(ndimage.map_coordinates(prior, coordinates, order=1, mode="nearest"))
