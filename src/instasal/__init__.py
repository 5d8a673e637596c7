"""instasal: instance-level quantitative saliency for 3D segmentation networks.

The public API of SPEC §5 is re-exported here.
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
    from instasal.models import available_models, load_model
    from instasal.saliency import (
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
    "available_models": "instasal.models",
    "load_model": "instasal.models",
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
    "ImageError",
    "Instance",
    "Instances",
    "InstasalError",
    "ModelError",
    "OutputExistsError",
    "Subject",
    "__version__",
    "available_models",
    "classify_instances",
    "find_instances",
    "instance_gradcam",
    "instance_gradcam_many",
    "instance_smoothgrad",
    "instance_smoothgrad_many",
    "load_model",
    "normalise_map",
    "patch_full_agreement",
    "read_subject",
]
