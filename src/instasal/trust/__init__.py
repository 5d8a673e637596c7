"""Can a map be trusted? Model randomisation, deletion and insertion, ablation, radial profiles.

The checks of ``docs/trust.md``, per lesion domain Ω, as pure functions over
``(model, x, domain)`` and the maps of :mod:`instasal.saliency`: ``sanity`` (model randomisation
against a null, Adebayo et al. 2018), ``faithfulness`` (deletion and insertion curves beside
model-free orders), ``ablation`` (channel ablation, the ground truth of modality reliance),
``profiles`` (radial saliency profile and the negative-neighbourhood rule), ``similarity`` (the
map comparisons).
"""

from instasal.trust.ablation import (
    ABLATION_FILLS,
    ablated_channels,
    ablation_agreement,
    channel_ablation,
)
from instasal.trust.faithfulness import (
    DELETION_STEPS,
    MODEL_FREE_ORDERS,
    VARIANTS,
    FaithfulnessResult,
    baseline_values,
    deletion_insertion,
    map_orders,
    model_free_orders,
    voxel_order,
)
from instasal.trust.profiles import (
    PROFILE_COLUMNS,
    SIGN_PLACES,
    SIGN_RING_WIDTH_MM,
    SIGN_RINGS_MAX_MM,
    SIGN_ROUNDOFF,
    radial_profile,
    shell_width,
    sign_rings,
)
from instasal.trust.sanity import (
    COHORT_PASS_SHARE,
    IDENTICAL,
    NULL_SEEDS,
    REGIONS,
    VERDICT_MEASURES,
    VERDICT_REGION,
    MapMethod,
    RandomisationResult,
    compare_with_null,
    layer_blocks,
    matched_normal,
    noise_seed,
    parameter_layers,
    randomisation,
    randomised_copy,
)
from instasal.trust.similarity import (
    NEIGHBOURHOOD_MM,
    SIMILARITY_MEASURES,
    map_similarity,
    neighbourhood,
    omega_mean,
    peak_ratio,
    spearman_abs,
    spearman_signed,
    ssim,
)

__all__ = [
    "ABLATION_FILLS",
    "COHORT_PASS_SHARE",
    "DELETION_STEPS",
    "IDENTICAL",
    "MODEL_FREE_ORDERS",
    "NEIGHBOURHOOD_MM",
    "NULL_SEEDS",
    "PROFILE_COLUMNS",
    "REGIONS",
    "SIGN_PLACES",
    "SIGN_RINGS_MAX_MM",
    "SIGN_RING_WIDTH_MM",
    "SIGN_ROUNDOFF",
    "SIMILARITY_MEASURES",
    "VARIANTS",
    "VERDICT_MEASURES",
    "VERDICT_REGION",
    "FaithfulnessResult",
    "MapMethod",
    "RandomisationResult",
    "ablated_channels",
    "ablation_agreement",
    "baseline_values",
    "channel_ablation",
    "compare_with_null",
    "deletion_insertion",
    "layer_blocks",
    "map_orders",
    "map_similarity",
    "matched_normal",
    "model_free_orders",
    "neighbourhood",
    "noise_seed",
    "omega_mean",
    "parameter_layers",
    "peak_ratio",
    "radial_profile",
    "randomisation",
    "randomised_copy",
    "shell_width",
    "sign_rings",
    "spearman_abs",
    "spearman_signed",
    "ssim",
    "voxel_order",
]
