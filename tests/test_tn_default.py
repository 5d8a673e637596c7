"""Where TN domains lie by default: one truth in the code, its note and the CLI help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FlairThreshold, set_card, write_channels
from instasal.errors import InstasalWarning
from instasal.pipeline import ExplainSettings, explain_subject
from instasal.saliency import SmoothGradConfig

DEFAULT_TISSUE = "the non-zero voxels of the first channel"
HELP = (
    "import sys\n"
    "from instasal.cli import main\n"
    "sys.argv = ['instasal', 'explain', '--help']\n"
    "main()\n"
)


def test_true_negatives_lie_in_the_first_channels_non_zero_voxels(tmp_path: Path) -> None:
    flair = np.zeros((20, 20, 20), np.float32)
    flair[2:18, 2:18, 2:10] = 1.0  # the "brain": the lower half only
    flair[4:7, 4:7, 4:7] = 3.0  # one lesion
    t1w = np.where(flair > 0, 0.5, 0.0).astype(np.float32)
    lesion = (flair > 2).astype(np.uint8)
    paths = write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w, "lesion": lesion})
    model = FlairThreshold()
    set_card(
        model,
        {"name": "toy", "architecture": "module", "normalisation": "none", "threshold": 0.5},
    )
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=1), gradcam=None, n_true_negatives=400, max_lesions=1
    )
    with pytest.warns(InstasalWarning, match=DEFAULT_TISSUE):
        result = explain_subject(
            paths[:2], model, tmp_path / "out", reference=paths[2], settings=settings
        )
    tn = result.instances.of_kind("TN")
    assert tn, "some TN domains fit"
    for record in tn:
        assert (flair[result.instances.mask(record.id)] > 0).all()


def test_the_cli_help_states_the_same_default() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert DEFAULT_TISSUE in " ".join(done.stdout.split())
