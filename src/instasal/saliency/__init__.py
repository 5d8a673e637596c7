"""Instance saliency: instance SmoothGrad and instance Grad-CAM++ / Grad-CAM (SPEC §2, §3, §5).

Computations over ``(model, x, domain)`` without side effects: no files, no model zoo. One concept
per module: ``noise`` (seeded SmoothGrad noise), ``windows`` (whole volume or patch), ``deployed``
(the sliding-window prediction's own forward), ``explained`` (that forward's logits), ``engines``
(exact Jacobian-row engines), ``smoothgrad``, ``gradcam``, ``agreement`` (patch versus full
context), ``model_state`` (eval mode and restoring the model), ``inputs`` (argument checks),
``summaries`` (the lesion-table numbers of one map). Each method is an object constructed once with
the model and its settings, a validated, frozen config (:class:`InstanceSmoothGrad` with
:class:`SmoothGradConfig`, :class:`InstanceGradCam` with :class:`GradCamConfig`), then called with
the subject, its domains and the forward pass explained (:class:`ExplainedPass`: target, context,
patch, size divisibility). The functions of SPEC §5 are front doors that take them as keywords.
"""

from typing import TYPE_CHECKING

from instasal.lazy import lazy_exports
from instasal.saliency.config import (
    CamVariant,
    ExplainedPass,
    GradCamConfig,
    MemoryFormat,
    SmoothGradConfig,
)

if TYPE_CHECKING:
    from instasal.saliency.agreement import (
        context_agreement,
        map_agreement,
        patch_full_agreement,
    )
    from instasal.saliency.engines import EngineChoice, cached_engine_choices
    from instasal.saliency.explained import explained_logits
    from instasal.saliency.gradcam import (
        InstanceGradCam,
        instance_gradcam,
        instance_gradcam_many,
        normalise_map,
    )
    from instasal.saliency.smoothgrad import (
        InstanceSmoothGrad,
        SmoothGradWork,
        instance_smoothgrad,
        instance_smoothgrad_many,
    )

__all__ = [
    "CamVariant",
    "EngineChoice",
    "ExplainedPass",
    "GradCamConfig",
    "InstanceGradCam",
    "InstanceSmoothGrad",
    "MemoryFormat",
    "SmoothGradConfig",
    "SmoothGradWork",
    "cached_engine_choices",
    "context_agreement",
    "explained_logits",
    "instance_gradcam",
    "instance_gradcam_many",
    "instance_smoothgrad",
    "instance_smoothgrad_many",
    "map_agreement",
    "normalise_map",
    "patch_full_agreement",
]

# The configs import light (a command line checks its options with them before torch loads); the
# methods, which need torch, load on first use.
_LAZY = {
    "map_agreement": "instasal.saliency.agreement",
    "patch_full_agreement": "instasal.saliency.agreement",
    "context_agreement": "instasal.saliency.agreement",
    "EngineChoice": "instasal.saliency.engines",
    "cached_engine_choices": "instasal.saliency.engines",
    "explained_logits": "instasal.saliency.explained",
    "InstanceGradCam": "instasal.saliency.gradcam",
    "instance_gradcam": "instasal.saliency.gradcam",
    "instance_gradcam_many": "instasal.saliency.gradcam",
    "normalise_map": "instasal.saliency.gradcam",
    "InstanceSmoothGrad": "instasal.saliency.smoothgrad",
    "instance_smoothgrad": "instasal.saliency.smoothgrad",
    "instance_smoothgrad_many": "instasal.saliency.smoothgrad",
    "SmoothGradWork": "instasal.saliency.smoothgrad",
}


__getattr__ = lazy_exports(__name__, _LAZY)
