"""The Ray executor when Ray itself fails under a running cohort (a system process dies)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from instasal.dataset import SubjectFiles
from instasal.pipeline import ExplainSettings
from instasal.pipeline import cohort as cohort_module
from instasal.pipeline.cohort import run_cohort
from instasal.saliency import SmoothGradConfig

SETTINGS = ExplainSettings(
    smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, n_true_negatives=0, context="full"
)


def test_a_raylet_dying_mid_cohort_fails_the_subjects_it_took_in_one_line(
    tmp_path: Path, linear_dataset: Path, linear_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sub-01 is explained; then sub-02's Ray worker kills its raylet (the worker's parent, a
    process of the Ray instance this run started) and itself. The run ends without a traceback:
    sub-01 done, sub-02 failed with one line naming what Ray lost, and the records say so."""
    pytest.importorskip("ray")
    explain_one = cohort_module._explain_one

    def raylet_dies_at_sub_02(subject: SubjectFiles, model: nn.Module, **bound: Any) -> Any:
        if subject.subject_id != "sub-02":
            return explain_one(subject, model, **bound)
        first = bound["out"] / "status" / "sub-01.json"
        deadline = time.monotonic() + 120
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)  # and the worker goes down with it

    monkeypatch.setattr(cohort_module, "_explain_one", raylet_dies_at_sub_02)
    out = tmp_path / "ray"
    result = run_cohort(
        linear_dataset,
        str(linear_model_path),
        out,
        settings=SETTINGS,
        executor="ray",
        subjects=["sub-01", "sub-02"],
    )
    assert result.done == ["sub-01"]
    assert list(result.failed) == ["sub-02"]
    reason = result.failed["sub-02"]
    assert re.match(r"Ray lost the task \((LocalRayletDiedError|WorkerCrashedError): ", reason)
    assert reason.endswith("; run the cohort again to explain the subject")
    assert "\n" not in reason
    status = json.loads((out / "status" / "sub-02.json").read_text())
    assert (status["state"], status["error"]) == ("failed", reason)
    failures = json.loads((out / "failures.json").read_text())
    assert failures == {"failed": {"sub-02": reason}, "n_failed": 1}
