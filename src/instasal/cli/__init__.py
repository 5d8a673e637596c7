"""The ``instasal`` command line: thin typer commands over the Python API.

Every command module registers its commands on :data:`app`. Errors derived from
:class:`~instasal.errors.InstasalError` are printed as one line and exit with status 2; heavy
modules (torch, MONAI) are imported inside the commands.
"""

from __future__ import annotations

import sys

from instasal.cli import analysis_commands as _analysis_commands  # noqa: F401  (registers)
from instasal.cli import commands as _commands  # noqa: F401  (registers the commands)
from instasal.cli import experiment_commands as _experiment_commands  # noqa: F401
from instasal.cli import model_commands as _model_commands  # noqa: F401
from instasal.cli._app import app, console, run_app

__all__ = ["app", "console", "main"]


def main() -> None:
    """Entry point of the ``instasal`` executable."""
    sys.exit(run_app(sys.argv[1:]))
