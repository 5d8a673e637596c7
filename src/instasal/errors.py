"""The instasal exception hierarchy.

Every error a user can cause derives from :class:`InstasalError`; its message says what is wrong,
where (file or argument), the value seen and what was expected, in one line. The command line prints
exactly that line and exits non-zero.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "ConfigurationError",
    "ImageError",
    "InstasalError",
    "InstasalWarning",
    "ModelError",
    "OutputExistsError",
    "OutputLockedError",
    "StateFileError",
    "describe_os_error",
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


class OutputLockedError(InstasalError):
    """Another live run holds the output folder (or the cohort subject) this run would write."""


class StateFileError(InstasalError, ValueError):
    """A state file of an earlier run (``run.json``, ``cohort.json``) cannot be read."""


class InstasalWarning(UserWarning):
    """A one-line note on something instasal assumed or did for the user (the CLI prints it)."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (whitespace collapsed), or its type's name when empty.

    >>> one_line(ValueError("bad   header"))
    'bad header'
    """
    return " ".join(str(error).split()) or type(error).__name__


_OS_ERROR_ADVICE = {
    errno.ENOSPC: "no space left on the device; every file written so far is complete "
    "(written atomically): free space and run the same command again to resume",
    errno.EDQUOT: "disk quota exceeded; every file written so far is complete "
    "(written atomically): free space and run the same command again to resume",
    errno.EROFS: "read-only file system; choose a writable output folder (--out)",
    errno.EACCES: "permission denied; choose a folder you may write (--out) or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you may write (--out)",
    errno.EEXIST: "a file is in the way; choose another path (--out)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path (--out)",
    errno.EISDIR: "is a folder, expected a file",
}


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error: the path, what happened and what the user can do.

    The one place where instasal turns :class:`OSError` into words (the command line prints it).

    >>> describe_os_error(OSError(errno.EROFS, "Read-only file system", "/mnt/out"))
    '/mnt/out: read-only file system; choose a writable output folder (--out)'
    """
    name = error.filename
    path = os.fsdecode(name) if isinstance(name, str | bytes | os.PathLike) else "output"
    advice = _OS_ERROR_ADVICE.get(error.errno or 0)
    if advice is None:
        reason = error.strerror or one_line(error)
        advice = f"{reason} (OS error {error.errno})" if error.errno else reason
    return f"{path}: {advice}"
