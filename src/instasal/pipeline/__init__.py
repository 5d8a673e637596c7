"""Pipelines composing I/O, models, instances and saliency: explain one subject."""

from typing import TYPE_CHECKING

from instasal.lazy import lazy_exports
from instasal.pipeline.settings import DEMO_SETTINGS, ExplainSettings

if TYPE_CHECKING:
    from instasal.pipeline.explain import explain_subject
    from instasal.pipeline.results import ExplainResult

__all__ = [
    "DEMO_SETTINGS",
    "ExplainResult",
    "ExplainSettings",
    "explain_subject",
]

# The settings import light; the explain stage (torch, models) loads on first use, so that the
# command line validates its options before paying for torch.
__getattr__ = lazy_exports(
    __name__,
    {"ExplainResult": "instasal.pipeline.results", "explain_subject": "instasal.pipeline.explain"},
)
