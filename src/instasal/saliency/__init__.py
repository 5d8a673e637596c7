"""Instance saliency: instance SmoothGrad and instance Grad-CAM++ / Grad-CAM (SPEC §2, §3, §5).

Pure functions over ``(model, x, domain)``: no files, no model zoo. One concept per module:
``noise`` (seeded SmoothGrad noise), ``context`` (whole volume or patch), ``engines`` (exact
Jacobian-row engines), ``smoothgrad``, ``gradcam``, ``agreement`` (patch versus full context),
``model_state`` (eval mode and restoring the model), ``inputs`` (argument checks).
"""

from instasal.saliency.agreement import map_agreement, patch_full_agreement
from instasal.saliency.engines import EngineChoice, cached_engine_choices
from instasal.saliency.gradcam import (
    instance_gradcam,
    instance_gradcam_many,
    normalise_map,
)
from instasal.saliency.smoothgrad import (
    SmoothGradConfig,
    instance_smoothgrad,
    instance_smoothgrad_many,
)

__all__ = [
    "EngineChoice",
    "SmoothGradConfig",
    "cached_engine_choices",
    "instance_gradcam",
    "instance_gradcam_many",
    "instance_smoothgrad",
    "instance_smoothgrad_many",
    "map_agreement",
    "normalise_map",
    "patch_full_agreement",
]
