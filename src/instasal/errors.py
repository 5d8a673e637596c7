"""The instasal exception hierarchy.

Every error a user can cause derives from :class:`InstasalError`; its message says what is wrong,
where (file or argument), the value seen and what was expected, in one line. The command line prints
exactly that line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ImageError",
    "InstasalError",
    "InstasalWarning",
    "ModelError",
    "OutputExistsError",
    "one_line",
]


class InstasalError(Exception):
    """Base class of every error instasal raises on bad input or a refused action."""


class ImageError(InstasalError, ValueError):
    """An input image is missing, unreadable, or inconsistent with the others."""


class ModelError(InstasalError, ValueError):
    """A model cannot be found or loaded, or does not match the subject."""


class ConfigurationError(InstasalError, ValueError):
    """An argument is out of its valid range."""


class OutputExistsError(InstasalError, FileExistsError):
    """An output exists already and overwriting was not requested."""


class InstasalWarning(UserWarning):
    """A one-line note on something instasal assumed or did for the user (the CLI prints it)."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace collapsed), or its type's name when empty.

    >>> one_line(ValueError("bad   header"))
    'bad header'
    """
    return " ".join(str(error).split()) or type(error).__name__
