"""One v2 phantom subject (docs/phantoms.md §v2): anatomy, tissue, mimics, lesions, acquisition."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from instasal.phantoms.anatomy import (
    DEFORMATION_RANGES,
    SubjectAnatomy,
    distance_near_brain,
    load_template_anatomy,
    sample_trilinear,
    warp_anatomy,
)
from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.contrast_v2 import (
    ACQUISITION_RANGES_V2,
    TISSUE_RANGES_V2,
    add_correlated_rician_noise,
    draw_acquisition,
    head_images,
    synthesise_tissue,
)
from instasal.phantoms.lesion_placement import LesionSet, region_atlas
from instasal.phantoms.lesions_v2 import (
    LESION_PARAMETERS_V2,
    MIN_LESION_MM3,
    draw_lesion_count_v2,
    insert_lesions_v2,
)
from instasal.phantoms.mimics import MIMIC_PARAMETERS, insert_mimics
from instasal.phantoms.mimics_v2 import MIMIC_PARAMETERS_V2, insert_mimics_v2
from instasal.phantoms.reference_data import load_colin27, load_lesion_prior, reference_provenance
from instasal.typing import BoolArray, FloatArray, IntArray, Resolution

__all__ = [
    "DEFORMATION_RANGES_V2",
    "EXTRACEREBRAL_CSF_MM",
    "SubjectV2",
    "generate_v2",
    "generation_parameters_v2",
]

# v1's deformation with a larger free-form part (more than one anatomy per template).
DEFORMATION_RANGES_V2: dict[str, tuple[float, float]] = {
    **DEFORMATION_RANGES,
    "free_form_rms_mm": (1.5, 4.0),
    "ventricle_expansion": (0.0, 0.2),
}
# Width of the band of extracerebral CSF a skull-stripping mask keeps around the brain.
EXTRACEREBRAL_CSF_MM = (2.0, 4.0)


@dataclass(frozen=True, eq=False)
class SubjectV2:
    """Everything :func:`generate_v2` makes, before it is packed into a ``PhantomSubject``.

    ``noise_free`` (only when asked for) holds FLAIR and T1w in scanner units with the bias field
    but before noise, for measuring noise, SNR and bias on the final images.
    """

    flair: FloatArray
    t1w: FloatArray
    anatomy: SubjectAnatomy
    atlas: IntArray
    lesions: LesionSet
    mimic_mask: BoolArray
    draws: dict[str, Any]
    noise_free: tuple[FloatArray, FloatArray] | None = None


def _anatomy(
    rng: np.random.Generator, arm: PhantomArm, resolution: Resolution
) -> tuple[str, SubjectAnatomy, FloatArray | None]:
    """Which brain, its warp, and (head arm) the warped head contrast."""
    name = arm.anatomy
    if name == "drawn":
        drawn_colin = rng.random() < 0.5
        name = (
            "colin27" if (drawn_colin and resolution == 2) or not arm.skull_stripped else "mni152"
        )
    if name == "mni152":
        return (
            name,
            warp_anatomy(rng, load_template_anatomy(resolution), DEFORMATION_RANGES_V2),
            None,
        )
    colin = load_colin27(resolution)
    whole_grid = not arm.skull_stripped
    anatomy = warp_anatomy(rng, colin.anatomy, DEFORMATION_RANGES_V2, whole_grid=whole_grid)
    if not whole_grid:
        return name, anatomy, None
    head = sample_trilinear(colin.head[..., None], anatomy.coordinates.reshape(3, -1))[:, 0]
    return name, anatomy, head.reshape(anatomy.t1.shape)


def _stripping_mask(rng: np.random.Generator, anatomy: SubjectAnatomy) -> tuple[BoolArray, float]:
    """Brain plus a band of extracerebral CSF, as BET/HD-BET masks keep; and the band's width."""
    resolution = float(anatomy.template.resolution)
    width = float(rng.uniform(*EXTRACEREBRAL_CSF_MM))
    distance = distance_near_brain(anatomy.brain_mask, anatomy.brain_mask, width, resolution)
    return np.asarray(distance <= width), width


def generate_v2(
    seed: int,
    resolution: Resolution,
    n_lesions: int | None,
    arm: PhantomArm,
    keep_noise_free: bool = False,
) -> SubjectV2:
    """Generate one v2 subject (arguments checked by ``make_phantom``); ``keep_noise_free`` also
    returns the images before noise (the same draws: the result is identical either way)."""
    rng = np.random.default_rng(int(seed))
    anatomy_name, anatomy, head = _anatomy(rng, arm, resolution)
    acquisition = draw_acquisition(rng)
    flair, t1w, n_perivascular = synthesise_tissue(anatomy, acquisition, rng)
    mimics = insert_mimics(rng, anatomy, flair)
    flair, t1w, mimic_mask = insert_mimics_v2(rng, anatomy, mimics.flair, t1w, mimics.mask)
    count = draw_lesion_count_v2(rng) if n_lesions is None else int(n_lesions)
    atlas = region_atlas(anatomy)
    lesions = insert_lesions_v2(
        rng,
        anatomy,
        flair,
        t1w,
        count,
        load_lesion_prior(resolution),
        atlas,
        arm.contrast,
        (acquisition.flair_csf, acquisition.t1w_csf),
    )
    flair, t1w = lesions.flair, lesions.t1w
    if head is None:
        mask, band = _stripping_mask(rng, anatomy)
        outside = mask & ~anatomy.brain_mask
        flair = np.where(outside, np.float32(acquisition.flair_csf), flair)
        t1w = np.where(outside, np.float32(acquisition.t1w_csf), t1w)
    else:
        band = 0.0
        mask = np.ones(anatomy.t1.shape, dtype=bool)
        flair, t1w = head_images(
            head, anatomy.brain_mask.astype(np.float32), flair, t1w, acquisition
        )
    outputs = []
    for image, scale, snr, bias in (
        (flair, acquisition.flair_scale, acquisition.flair_snr, acquisition.flair_bias),
        (t1w, acquisition.t1w_scale, acquisition.t1w_snr, acquisition.t1w_bias),
    ):
        noisy, biased = add_correlated_rician_noise(
            image, mask, snr, bias, acquisition.noise_correlation, rng, resolution
        )
        outputs.append((scale * noisy, scale * biased))
    draws = {
        "anatomy": anatomy_name,
        **dataclasses.asdict(acquisition),
        "perivascular_spaces": n_perivascular,
        "extracerebral_csf_mm": band,
    }
    return SubjectV2(
        flair=outputs[0][0].astype(np.float32),
        t1w=outputs[1][0].astype(np.float32),
        anatomy=anatomy,
        atlas=atlas,
        lesions=lesions,
        mimic_mask=mimic_mask & ~lesions.mask,
        draws=draws,
        noise_free=(outputs[0][1], outputs[1][1]) if keep_noise_free else None,
    )


def generation_parameters_v2() -> dict[str, Any]:
    """Every fixed parameter of the v2 generator, JSON-ready, with the shipped data's provenance."""
    return {
        "templates": "MNI152 ICBM 2009 (nilearn) and Colin27 (mricron-data, derived maps)",
        "deformation": {name: list(bounds) for name, bounds in DEFORMATION_RANGES_V2.items()},
        "extracerebral_csf_mm": list(EXTRACEREBRAL_CSF_MM),
        "tissue_ranges": {name: list(bounds) for name, bounds in TISSUE_RANGES_V2.items()},
        "acquisition_ranges": {
            field: {name: list(bounds) for name, bounds in ranges.items()}
            for field, ranges in ACQUISITION_RANGES_V2.items()
        },
        "lesions": dataclasses.asdict(LESION_PARAMETERS_V2),
        "min_lesion_mm3": MIN_LESION_MM3,
        "mimics_v1": dataclasses.asdict(MIMIC_PARAMETERS),
        "mimics_v2": dataclasses.asdict(MIMIC_PARAMETERS_V2),
        "noise": "Rician; complex Gaussian filtered by (a, 1, a) per axis (neighbour correlation "
        "drawn at 1 mm), per field strength SNR of a 1 mm voxel; at 2 mm the 1 mm noise's "
        "pooled sd and correlation",
        "reference_data": reference_provenance(),
    }
