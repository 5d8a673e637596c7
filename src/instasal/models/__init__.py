"""Segmentation models: built-in architectures, model cards, loaders and sliding-window inference.

See SPEC §5 (``available_models``, ``load_model``) and ``docs/models.md``.
"""

from instasal.models.architectures import (
    ARCHITECTURES,
    build_network,
    default_gradcam_layer,
    default_hyperparameters,
    nnunet_topology,
    size_divisibility,
)
from instasal.models.cards import ModelCard, attach_card, card_of, read_card
from instasal.models.export import export_weights
from instasal.models.inference import predict_logits, predict_probability, probability_from_logits
from instasal.models.loaders import (
    available_models,
    check_channels,
    load_model,
    with_model_channels,
)

__all__ = [
    "ARCHITECTURES",
    "ModelCard",
    "attach_card",
    "available_models",
    "build_network",
    "card_of",
    "check_channels",
    "default_gradcam_layer",
    "default_hyperparameters",
    "export_weights",
    "load_model",
    "nnunet_topology",
    "predict_logits",
    "predict_probability",
    "probability_from_logits",
    "read_card",
    "size_divisibility",
    "with_model_channels",
]
