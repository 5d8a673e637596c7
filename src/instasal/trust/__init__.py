"""Can a map be trusted? Model randomisation, deletion and insertion, radial profiles.

The checks of ``docs/trust.md``, per lesion domain Ω, as pure functions over
``(model, x, domain)`` and the maps of :mod:`instasal.saliency`: ``sanity`` (model randomisation,
Adebayo et al. 2018), ``faithfulness`` (deletion and insertion curves), ``profiles`` (radial
saliency profile and the negative-neighbourhood rule), ``similarity`` (the map comparisons).
"""

from instasal.trust.faithfulness import (
    FaithfulnessResult,
    baseline_values,
    deletion_insertion,
    voxel_order,
)
from instasal.trust.profiles import (
    PROFILE_COLUMNS,
    TROUGH_BAND_MM,
    profile_minimum,
    radial_profile,
    shell_width,
)
from instasal.trust.sanity import (
    COHORT_PASS_SHARE,
    RANDOMISATION_THRESHOLD,
    RandomisationResult,
    layer_blocks,
    matched_normal,
    parameter_layers,
    randomisation,
    randomised_copy,
)
from instasal.trust.similarity import (
    NEIGHBOURHOOD_MM,
    map_similarity,
    neighbourhood,
    peak_ratio,
    spearman_abs,
    ssim,
)

__all__ = [
    "COHORT_PASS_SHARE",
    "NEIGHBOURHOOD_MM",
    "PROFILE_COLUMNS",
    "RANDOMISATION_THRESHOLD",
    "TROUGH_BAND_MM",
    "FaithfulnessResult",
    "RandomisationResult",
    "baseline_values",
    "deletion_insertion",
    "layer_blocks",
    "map_similarity",
    "matched_normal",
    "neighbourhood",
    "parameter_layers",
    "peak_ratio",
    "profile_minimum",
    "radial_profile",
    "randomisation",
    "randomised_copy",
    "shell_width",
    "spearman_abs",
    "ssim",
    "voxel_order",
]
