"""What produced an output: the instasal version and the versions of the libraries used.

Versions are read from the installed distributions' metadata (:mod:`importlib.metadata`), not by
importing the libraries.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata

__all__ = ["instasal_version", "software_versions"]

UNKNOWN = "unknown"


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def instasal_version() -> str:
    """The installed instasal's version (``"unknown"`` in a source tree never installed)."""
    return _distribution_version("instasal")


def software_versions(distributions: Sequence[str]) -> dict[str, str]:
    """``{"instasal": …, "python": …, <each distribution>: …, "platform": …}``.

    >>> sorted(software_versions(["numpy"]))
    ['instasal', 'numpy', 'platform', 'python']
    """
    versions = {"instasal": instasal_version(), "python": platform.python_version()}
    versions |= {name: _distribution_version(name) for name in distributions}
    versions["platform"] = platform.platform()
    return versions
