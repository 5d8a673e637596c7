#!/usr/bin/env python
"""Train a built-in model: the same as ``instasal train …`` (see ``docs/models.md``).

Example (the shipped U-Net)::

    nice -n 5 python scripts/train.py runs/phantoms/train --val runs/phantoms/val \\
        --out runs/unet --architecture unet --export src/instasal/weights
"""

from __future__ import annotations

import sys

from instasal.cli import model_commands  # noqa: F401  (registers the train command)
from instasal.cli._app import run_app

if __name__ == "__main__":
    sys.exit(run_app(["train", *sys.argv[1:]]))
