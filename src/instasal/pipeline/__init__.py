"""Pipelines composing I/O, models, instances and saliency: explain one subject."""

from typing import TYPE_CHECKING, Any

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
_FROM_EXPLAIN = ("ExplainResult", "explain_subject")


def __getattr__(name: str) -> Any:
    if name in _FROM_EXPLAIN:
        from instasal.pipeline import explain

        return getattr(explain, name)
    raise AttributeError(f"module 'instasal.pipeline' has no attribute {name!r}")
