"""instasal: instance-level quantitative saliency for 3D segmentation networks.

The public API is re-exported here: the entry points (:func:`explain_subject`, :func:`run_cohort`,
:func:`segment_subject`) with their settings (:class:`ExplainSettings`, :class:`SmoothGradConfig`,
:class:`GradCamConfig`), the models (:func:`load_model`, :func:`card_of`), the subject in a
model's space (:func:`read_subject`, :func:`prepare_subject`, :func:`predict_prepared`), lesion
domains and the two methods (objects :class:`InstanceSmoothGrad` and :class:`InstanceGradCam`
called with the forward pass explained, :class:`ExplainedPass`; and the keyword functions of SPEC
§5).
"""

from typing import TYPE_CHECKING

from instasal.errors import (
    ConfigurationError,
    ImageError,
    InstasalError,
    ModelError,
    OutputExistsError,
)
from instasal.lazy import lazy_exports
from instasal.provenance import instasal_version

if TYPE_CHECKING:
    from instasal.instances import Instance, Instances, classify_instances, find_instances
    from instasal.io import Subject, read_subject
    from instasal.models import ModelCard, available_models, card_of, load_model
    from instasal.models.segmentation import predict_prepared, segment_subject
    from instasal.pipeline import ExplainSettings, explain_subject
    from instasal.pipeline.cohort import run_cohort
    from instasal.prepare import prepare_subject
    from instasal.saliency import (
        ExplainedPass,
        GradCamConfig,
        InstanceGradCam,
        InstanceSmoothGrad,
        SmoothGradConfig,
        instance_gradcam,
        instance_gradcam_many,
        instance_smoothgrad,
        instance_smoothgrad_many,
        normalise_map,
        patch_full_agreement,
    )

# Names imported on first use, so that ``import instasal`` (and the command line's refusals of bad
# input) do not wait for torch.
_LAZY = {
    "Instance": "instasal.instances",
    "Instances": "instasal.instances",
    "classify_instances": "instasal.instances",
    "find_instances": "instasal.instances",
    "Subject": "instasal.io",
    "read_subject": "instasal.io",
    "ModelCard": "instasal.models",
    "available_models": "instasal.models",
    "card_of": "instasal.models",
    "load_model": "instasal.models",
    "predict_prepared": "instasal.models.segmentation",
    "segment_subject": "instasal.models.segmentation",
    "ExplainSettings": "instasal.pipeline",
    "explain_subject": "instasal.pipeline",
    "run_cohort": "instasal.pipeline.cohort",
    "prepare_subject": "instasal.prepare",
    "ExplainedPass": "instasal.saliency",
    "GradCamConfig": "instasal.saliency",
    "InstanceGradCam": "instasal.saliency",
    "InstanceSmoothGrad": "instasal.saliency",
    "SmoothGradConfig": "instasal.saliency",
    "instance_gradcam": "instasal.saliency",
    "instance_gradcam_many": "instasal.saliency",
    "instance_smoothgrad": "instasal.saliency",
    "instance_smoothgrad_many": "instasal.saliency",
    "normalise_map": "instasal.saliency",
    "patch_full_agreement": "instasal.saliency",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__version__ = instasal_version()

__all__ = [
    "ConfigurationError",
    "ExplainSettings",
    "ExplainedPass",
    "GradCamConfig",
    "ImageError",
    "Instance",
    "InstanceGradCam",
    "InstanceSmoothGrad",
    "Instances",
    "InstasalError",
    "ModelCard",
    "ModelError",
    "OutputExistsError",
    "SmoothGradConfig",
    "Subject",
    "__version__",
    "available_models",
    "card_of",
    "classify_instances",
    "explain_subject",
    "find_instances",
    "instance_gradcam",
    "instance_gradcam_many",
    "instance_smoothgrad",
    "instance_smoothgrad_many",
    "load_model",
    "normalise_map",
    "patch_full_agreement",
    "predict_prepared",
    "prepare_subject",
    "read_subject",
    "run_cohort",
    "segment_subject",
]
