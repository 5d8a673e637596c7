"""One phantom MS subject: anatomy, mimics, lesions and acquisition, from one seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from instasal.errors import ConfigurationError
from instasal.phantoms.anatomy import (
    DEFORMATION_RANGES,
    FREE_FORM_SPACING_MM,
    VENTRICLE_EXPANSION_WIDTH_MM,
    load_template_anatomy,
    warp_anatomy,
)
from instasal.phantoms.arms import PhantomArm
from instasal.phantoms.contrast import (
    BIAS_SPACING_MM,
    CONTRAST_RANGES,
    DEEP_GREY_FLAIR_FACTOR,
    WHITE_TEXTURE_SPACING_MM,
    add_rician_noise,
    random_contrast,
    synthesise_images,
)
from instasal.phantoms.lesion_placement import (
    LESION_PARAMETERS,
    REGION_LABELS,
    Lesion,
    draw_lesion_count,
    insert_lesions,
    region_atlas,
)
from instasal.phantoms.mimics import MIMIC_PARAMETERS, insert_mimics
from instasal.phantoms.subject_v2 import generate_v2
from instasal.typing import BoolArray, FloatArray, Generator, IntArray, Resolution, check_seed

__all__ = ["MAX_LESIONS", "PhantomSubject", "generation_parameters", "make_phantom"]

MAX_LESIONS = 200


@dataclass(frozen=True, eq=False)
class PhantomSubject:
    """A generated subject with its ground truth, on the MNI152 grid (1 or 2 mm).

    Attributes
    ----------
    flair, t1w
        float32 ``[X, Y, Z]`` images, non-negative; v1: zero outside the brain (skull-stripped);
        v2: zero outside the brain and a band of extracerebral CSF, or the whole head (its arm).
    lesion_mask
        Ground-truth lesions (voxels with lesion partial volume ≥ 0.5).
    lesion_regions
        uint8 labels: 0 none, 1 periventricular, 2 juxtacortical, 3 deep white matter,
        4 infratentorial.
    region_atlas
        uint8 region of every brain voxel (same labels; 0 outside the brain), by the placement
        rules made exhaustive (:func:`instasal.phantoms.lesion_placement.region_atlas`).
    brain_mask, wm_mask
        Brain and (anatomical, lesions included) white matter.
    mimic_mask
        FLAIR hyperintensities that are not lesions (caps, rim, septum, sulcal spots).
    affine
        4x4 voxel-to-world (RAS mm) matrix.
    lesions
        One record per placed lesion.
    seed, resolution
        What the subject was generated from.
    generator, arm
        ``"v1"`` (arm None) or ``"v2"`` with its :class:`PhantomArm`.
    draws
        v2 only: the subject-level draws (anatomy, field strength, tissue levels, SNR, bias,
        perivascular spaces, extracerebral CSF band); empty for v1.
    """

    flair: FloatArray
    t1w: FloatArray
    lesion_mask: BoolArray
    lesion_regions: IntArray
    region_atlas: IntArray
    brain_mask: BoolArray
    wm_mask: BoolArray
    mimic_mask: BoolArray
    affine: np.ndarray
    lesions: tuple[Lesion, ...]
    seed: int
    resolution: int
    generator: Generator = "v1"
    arm: PhantomArm | None = None
    draws: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def image(self) -> FloatArray:
        """float32 ``[2, X, Y, Z]``: FLAIR then T1w (the model channel order)."""
        return np.stack([self.flair, self.t1w]).astype(np.float32, copy=False)

    @property
    def lesion_volume_mm3(self) -> float:
        """Total volume of the lesion mask in mm³."""
        return float(self.lesion_mask.sum()) * float(self.resolution) ** 3


def _check_arguments(
    seed: int, resolution: int, n_lesions: int | None, generator: str, arm: PhantomArm | None
) -> None:
    check_seed(seed)
    if generator not in ("v1", "v2"):
        raise ConfigurationError(f"generator must be 'v1' or 'v2', got {generator!r}")
    if arm is not None and not isinstance(arm, PhantomArm):
        raise ConfigurationError(f"arm must be a PhantomArm or None, got {arm!r}")
    if generator == "v1" and arm is not None:
        raise ConfigurationError(f"arms exist for generator='v2' only, got arm={arm!r} with 'v1'")
    if resolution not in (1, 2):
        raise ConfigurationError(f"resolution must be 1 or 2 (mm), got {resolution!r}")
    if n_lesions is not None and (
        isinstance(n_lesions, bool)
        or not isinstance(n_lesions, int | np.integer)
        or not 0 <= n_lesions <= MAX_LESIONS
    ):
        raise ConfigurationError(
            f"n_lesions must be None or an integer in [0, {MAX_LESIONS}], got {n_lesions!r}"
        )


def make_phantom(
    seed: int,
    *,
    resolution: Resolution = 2,
    n_lesions: int | None = None,
    generator: Generator = "v1",
    arm: PhantomArm | None = None,
) -> PhantomSubject:
    """Generate one phantom MS subject on real anatomy (the MNI152 2009 template).

    The template is warped by a random smooth deformation, given random tissue contrasts, FLAIR
    mimics (caps, rim, septal artefact, sulcal spots) and white-matter lesions in the MS
    predilection regions, then a bias field and Rician noise per modality. Same seed, same subject.

    Parameters
    ----------
    seed
        Non-negative integer seed; everything random derives from it.
    resolution
        Voxel size in mm: 1 (197×233×189) or 2 (99×117×95).
    n_lesions
        Number of lesions to place; default draws 0–40 (negative binomial, mean 14; v2: 0–120,
        mean 22). Fewer may be placed when a subject's white matter runs out of free candidate
        voxels.
    generator
        ``"v1"`` (default; byte-identical to every earlier release for the same seed) or
        ``"v2"``, the realism-specified generator (docs/phantoms.md §v2).
    arm
        v2 only: contrast arm, skull stripping and anatomy (default ``PhantomArm()``).

    Returns
    -------
    PhantomSubject
        Images and ground truth.

    Raises
    ------
    ConfigurationError
        When ``seed``, ``resolution``, ``n_lesions``, ``generator`` or ``arm`` is out of range
        (Colin27 and the head arm exist at 2 mm only).

    Examples
    --------
    >>> subject = make_phantom(0)  # doctest: +SKIP
    >>> subject.image.shape  # doctest: +SKIP
    (2, 99, 117, 95)
    """
    _check_arguments(seed, resolution, n_lesions, generator, arm)
    if generator == "v2":
        return _make_v2(seed, resolution, n_lesions, arm or PhantomArm())
    rng = np.random.default_rng(int(seed))
    template = load_template_anatomy(resolution)
    anatomy = warp_anatomy(rng, template)
    contrast = random_contrast(rng)
    flair, t1w = synthesise_images(anatomy, contrast, rng)
    mimics = insert_mimics(rng, anatomy, flair)
    count = draw_lesion_count(rng) if n_lesions is None else int(n_lesions)
    lesions = insert_lesions(rng, anatomy, mimics.flair, t1w, count)
    mask = anatomy.brain_mask
    # Noise levels are those of a 1 mm acquisition; a 2 mm voxel averages eight of them.
    averaging = float(resolution) ** -1.5
    flair_out = contrast.flair_scale * add_rician_noise(
        lesions.flair, mask, contrast.flair_noise * averaging, contrast.flair_bias, rng, resolution
    )
    t1w_out = contrast.t1_scale * add_rician_noise(
        lesions.t1w, mask, contrast.t1_noise * averaging, contrast.t1_bias, rng, resolution
    )
    return PhantomSubject(
        flair=flair_out.astype(np.float32),
        t1w=t1w_out.astype(np.float32),
        lesion_mask=lesions.mask,
        lesion_regions=lesions.regions,
        region_atlas=region_atlas(anatomy),
        brain_mask=mask,
        wm_mask=anatomy.white_mask,
        mimic_mask=mimics.mask & ~lesions.mask,
        affine=template.affine.copy(),
        lesions=lesions.lesions,
        seed=int(seed),
        resolution=int(resolution),
    )


def _make_v2(
    seed: int, resolution: Resolution, n_lesions: int | None, arm: PhantomArm
) -> PhantomSubject:
    made = generate_v2(seed, resolution, n_lesions, arm)
    anatomy = made.anatomy
    return PhantomSubject(
        flair=made.flair,
        t1w=made.t1w,
        lesion_mask=made.lesions.mask,
        lesion_regions=made.lesions.regions,
        region_atlas=made.atlas,
        brain_mask=anatomy.brain_mask,
        wm_mask=anatomy.white_mask,
        mimic_mask=made.mimic_mask,
        affine=anatomy.template.affine.copy(),
        lesions=made.lesions.lesions,
        seed=int(seed),
        resolution=int(resolution),
        generator="v2",
        arm=arm,
        draws=made.draws,
    )


def generation_parameters() -> dict[str, Any]:
    """Every fixed parameter of the generator, as JSON-ready data (for provenance files)."""
    return {
        "template": "MNI152 ICBM 2009 (nilearn, symmetric 09a), T1 and GM/WM maps, brain mask",
        "region_labels": dict(REGION_LABELS),
        "contrast_ranges": {name: list(bounds) for name, bounds in CONTRAST_RANGES.items()},
        "lesions": dataclasses.asdict(LESION_PARAMETERS),
        "mimics": dataclasses.asdict(MIMIC_PARAMETERS),
        "deformation": {name: list(bounds) for name, bounds in DEFORMATION_RANGES.items()},
        "ventricle_expansion_width_mm": VENTRICLE_EXPANSION_WIDTH_MM,
        "free_form_control_spacing_mm": FREE_FORM_SPACING_MM,
        "bias_field_control_spacing_mm": BIAS_SPACING_MM,
        "white_matter_texture_spacing_mm": WHITE_TEXTURE_SPACING_MM,
        "deep_grey_flair_factor": DEEP_GREY_FLAIR_FACTOR,
        "noise": "Rician (magnitude of complex Gaussian), sigma relative to white matter",
        "bias_field": "exp(amplitude * smooth unit field); amplitudes in contrast_ranges",
    }
