"""Each command forwards every run option it takes to the function it calls, unchanged.

The API function is replaced by a recorder; the command runs with every run option set away from
its default; the recorder must have received each of them (``--ignore-channel-names`` was once
dropped by ``explain``, so it never worked there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import instasal.cli.commands  # registers explain, cohort
import instasal.cli.model_commands  # noqa: F401  (registers segment)
from instasal.cli._app import app


class Forwarded(Exception):
    """Raised by the recorder once it has the call (the command stops there)."""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Existing files named against the model's channel order (T1w given first)."""
    t1w, flair = tmp_path / "sub-01_T1w.nii.gz", tmp_path / "sub-01_FLAIR.nii.gz"
    for path in (t1w, flair):
        path.write_bytes(b"")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    return {"t1w": str(t1w), "flair": str(flair), "dataset": str(dataset), "out": str(tmp_path)}


def _recorded(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> dict[str, Any]:
    calls: dict[str, Any] = {}

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.update(kwargs)
        raise Forwarded

    monkeypatch.setattr(module, name, record)
    return calls


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Forwarded), result.output


def test_explain_forwards_every_run_option(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import instasal.pipeline

    calls = _recorded(monkeypatch, instasal.pipeline, "explain_subject")
    _invoke(
        [
            *("explain", files["t1w"], files["flair"], "--out", files["out"] + "/explain"),
            *("--overwrite", "--trust-model-code", "--ignore-channel-names", "--yes"),
        ]
    )
    assert calls["overwrite"] is True
    assert calls["trust_model_code"] is True
    assert calls["ignore_channel_names"] is True
    assert calls["budget_s"] is None


def test_explain_forwards_the_budget(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import instasal.pipeline

    calls = _recorded(monkeypatch, instasal.pipeline, "explain_subject")
    _invoke(
        [
            *("explain", files["flair"], files["t1w"], "--out", files["out"] + "/explain"),
            *("--budget-hours", "2.5", "--max-stride", "2"),
        ]
    )
    assert calls["budget_s"] == pytest.approx(9000.0, abs=1e-9)
    assert calls["settings"].smoothgrad.max_stride == 2
    assert calls["overwrite"] is False


def test_cohort_forwards_every_run_option(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import instasal.pipeline.cohort

    calls = _recorded(monkeypatch, instasal.pipeline.cohort, "run_cohort")
    _invoke(
        [
            *("cohort", files["dataset"], "--out", files["out"] + "/cohort"),
            *("--overwrite", "--trust-model-code", "--ignore-channel-names", "--yes"),
            *("--tn-from", "brain", "--with-mean", "--max-stride", "3"),
        ]
    )
    assert calls["settings"].smoothgrad.max_stride == 3
    assert calls["overwrite"] is True
    assert calls["trust_model_code"] is True
    assert calls["ignore_channel_names"] is True
    assert calls["budget_s"] is None
    assert calls["tn_from"] == "brain"
    assert calls["with_mean"] is True


def test_segment_forwards_every_run_option(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import instasal.models
    import instasal.models.segmentation

    loaded: dict[str, Any] = {}
    monkeypatch.setattr(
        instasal.models, "load_model", lambda name, trust_code: loaded.update(trust=trust_code)
    )
    calls = _recorded(monkeypatch, instasal.models.segmentation, "segment_subject")
    _invoke(
        [
            *("segment", files["t1w"], files["flair"], "--out", files["out"] + "/segment"),
            *("--overwrite", "--trust-model-code", "--ignore-channel-names", "--no-tta"),
        ]
    )
    assert loaded["trust"] is True
    assert calls["overwrite"] is True
    assert calls["ignore_channel_names"] is True
    assert calls["tta"] is False
