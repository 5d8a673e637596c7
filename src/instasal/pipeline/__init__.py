"""Pipelines composing I/O, models, instances and saliency: explain one subject."""

from instasal.pipeline.explain import ExplainResult, ProgressCallback, explain_subject
from instasal.pipeline.settings import DEMO_SETTINGS, ExplainSettings

__all__ = [
    "DEMO_SETTINGS",
    "ExplainResult",
    "ExplainSettings",
    "ProgressCallback",
    "explain_subject",
]
