"""Names a package re-exports on first use (PEP 562), so that importing the package stays light.

``import instasal`` and the command line's checks of its options must not wait for torch; the
packages that re-export torch-backed names name them under ``TYPE_CHECKING`` (for readers and type
checkers) and resolve them here when first used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` giving ``name`` from the module ``homes[name]``, imported then.

    Examples
    --------
    >>> __getattr__ = lazy_exports("pkg", {"sqrt": "math"})
    >>> __getattr__("sqrt")(9.0)
    3.0
    >>> __getattr__("cbrt")
    Traceback (most recent call last):
    ...
    AttributeError: module 'pkg' has no attribute 'cbrt'
    """

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
