"""instasal: instance-level quantitative saliency for 3D segmentation networks.

The public API of SPEC §5 is re-exported here.
"""

from instasal.errors import (
    ConfigurationError,
    ImageError,
    InstasalError,
    ModelError,
    OutputExistsError,
)
from instasal.instances import Instance, Instances, classify_instances, find_instances
from instasal.io import Subject, read_subject
from instasal.models import available_models, load_model
from instasal.provenance import instasal_version
from instasal.saliency import (
    instance_gradcam,
    instance_gradcam_many,
    instance_smoothgrad,
    instance_smoothgrad_many,
    normalise_map,
    patch_full_agreement,
)

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
