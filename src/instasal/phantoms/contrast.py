"""Contrasts and acquisition of a phantom subject: FLAIR and T1w synthesis, bias field, noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instasal.phantoms.anatomy import DEEP_GREY_BOX, SubjectAnatomy, smooth_field, soft_box
from instasal.typing import BoolArray, FloatArray

__all__ = [
    "BIAS_SPACING_MM",
    "CONTRAST_RANGES",
    "DEEP_GREY_FLAIR_FACTOR",
    "WHITE_TEXTURE_SPACING_MM",
    "TissueContrast",
    "add_rician_noise",
    "random_contrast",
    "synthesise_images",
]

BIAS_SPACING_MM = 60.0
WHITE_TEXTURE_SPACING_MM = 6.0
# Deep grey nuclei on FLAIR: this fraction of the cortex's excess over white matter.
DEEP_GREY_FLAIR_FACTOR = 0.45

# Per-subject acquisition ranges (uniform draws): FLAIR intensities relative to white matter, the
# T1w gamma, scanner units, Rician noise sigma (of a 1 mm voxel, relative to white matter) and
# bias-field amplitude (log scale) per modality.
CONTRAST_RANGES: dict[str, tuple[float, float]] = {
    "flair_grey": (1.22, 1.42),
    "flair_csf": (0.08, 0.22),
    "flair_scale": (300.0, 700.0),
    "t1_gamma": (0.85, 1.2),
    "t1_scale": (600.0, 1400.0),
    "flair_noise": (0.03, 0.08),
    "t1_noise": (0.02, 0.05),
    "flair_bias": (0.05, 0.18),
    "t1_bias": (0.05, 0.15),
}


@dataclass(frozen=True)
class TissueContrast:
    """One subject's acquisition: tissue intensities, T1w gamma, field and noise levels.

    FLAIR intensities are relative to white matter (1.0); T1w keeps the template's contrast raised
    to ``t1_gamma``. ``*_scale`` are the scanner's arbitrary units; noise levels are fractions of
    white-matter intensity.
    """

    flair_grey: float
    flair_csf: float
    flair_scale: float
    t1_gamma: float
    t1_scale: float
    flair_noise: float
    t1_noise: float
    flair_bias: float
    t1_bias: float


def random_contrast(rng: np.random.Generator) -> TissueContrast:
    """Draw one subject's contrast, each field uniform within :data:`CONTRAST_RANGES`."""
    return TissueContrast(
        **{name: float(rng.uniform(low, high)) for name, (low, high) in CONTRAST_RANGES.items()}
    )


def synthesise_images(
    anatomy: SubjectAnatomy, contrast: TissueContrast, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Noise-free FLAIR and T1w of a subject, in units where white matter is 1.

    FLAIR mixes tissue intensities by the partial-volume maps (CSF suppressed, grey matter brighter
    than white matter), with a faint smooth texture in white matter; T1w is the warped template
    contrast with a gamma, scaled so that white matter is 1.
    """
    texture = smooth_field(
        rng, anatomy.t1.shape, anatomy.template.resolution, WHITE_TEXTURE_SPACING_MM
    )
    # Deep grey nuclei (thalamus, basal ganglia) are only mildly brighter than white matter on
    # FLAIR, unlike the cortex: their grey level is pulled towards white inside a soft box.
    deep = soft_box(anatomy.template.affine, anatomy.t1.shape, DEEP_GREY_BOX, 4.0)
    grey_level = (
        contrast.flair_grey - (1.0 - DEEP_GREY_FLAIR_FACTOR) * (contrast.flair_grey - 1.0) * deep
    )
    flair = (
        anatomy.white * (1.0 + 0.025 * texture)
        + grey_level * anatomy.grey
        + contrast.flair_csf * anatomy.csf
    )
    white_t1 = float(np.median(anatomy.t1[anatomy.white >= 0.9]))
    t1w = (anatomy.t1 / white_t1) ** contrast.t1_gamma
    return flair.astype(np.float32), t1w.astype(np.float32)


def add_rician_noise(
    image: FloatArray,
    mask: BoolArray,
    sigma: float,
    bias_amplitude: float,
    rng: np.random.Generator,
    resolution: float,
) -> FloatArray:
    """Multiply by a smooth bias field, then take the magnitude of complex Gaussian noise.

    The result is zero outside ``mask`` (skull-stripped), and non-negative everywhere.
    """
    bias = np.exp(bias_amplitude * smooth_field(rng, image.shape, resolution, BIAS_SPACING_MM))
    signal = (image * bias)[mask]
    real = signal + np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = np.float32(sigma) * rng.standard_normal(signal.shape, dtype=np.float32)
    out = np.zeros(image.shape, dtype=np.float32)
    out[mask] = np.sqrt(real * real + imaginary * imaginary)
    return out
