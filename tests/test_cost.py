"""The saliency stage's cost: counted exactly, stated before it starts, refused over a budget;
progress that counts the work actually done."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import set_card, write_channels
from instasal.errors import ConfigurationError
from instasal.pipeline import ExplainSettings, cost, explain_subject
from instasal.pipeline.cost import MEASURING, check_budget, estimate_cost
from instasal.saliency import ExplainedPass, InstanceSmoothGrad, SmoothGradConfig
from instasal.typing import Aggregation, Context


class SmallConvNet(nn.Module):
    """A non-linear network with a receptive field (3×3×3, two layers)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv3d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _domains() -> dict[int, torch.Tensor]:
    first = torch.zeros(12, 12, 12, dtype=torch.bool)
    second = torch.zeros(12, 12, 12, dtype=torch.bool)
    first[1:3, 1:3, 1:3] = True  # 8 voxels
    second[8:10, 8:11, 8:10] = True  # 12 voxels, in other windows
    return {1: first, 2: second}


def _model() -> nn.Module:
    model = SmallConvNet()
    set_card(model, {"name": "small", "architecture": "module", "patch_size": [6, 6, 6]})
    return model


@pytest.mark.parametrize("context", ["patch", "full", "deployed"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_counted_rows_are_the_rows_computed(context: Context, aggregation: Aggregation) -> None:
    model, x = _model(), torch.randn(2, 12, 12, 12)
    method = InstanceSmoothGrad(model, SmoothGradConfig(n_samples=2, aggregation=aggregation))
    explained = ExplainedPass(context=context, patch_size=(6, 6, 6))
    calls: list[tuple[float, float]] = []
    method.attribute(
        x,
        _domains(),
        explained,
        progress=lambda _stage, done, total: calls.append((done, total)),
    )
    work = method.work(x, _domains(), explained)
    assert calls[-1] == (work.rows, work.rows)
    assert {total for _, total in calls} == {work.rows}
    if aggregation == "max" and context != "deployed":
        assert work.rows == 2 * (8 + 12)
    assert work.draws == 2
    assert work.window_passes >= 2
    assert work.window_rows >= work.rows


def test_zero_noise_counts_one_draw() -> None:
    model, x = _model(), torch.randn(2, 12, 12, 12)
    config = SmoothGradConfig(n_samples=5, noise_level=0.0)
    assert InstanceSmoothGrad(model, config).work(x, _domains()).draws == 1


def test_estimate_counts_every_domain_and_the_budget_names_the_choices() -> None:
    model, x = _model(), torch.randn(2, 12, 12, 12)
    config = SmoothGradConfig(n_samples=4)
    explained = ExplainedPass(context="patch", patch_size=(6, 6, 6))
    estimate = estimate_cost(model, x, _domains(), config, None, explained)
    assert estimate.domains == 2
    assert estimate.rows == InstanceSmoothGrad(model, config).work(x, _domains(), explained).rows
    assert estimate.seconds_per_row > 0
    assert estimate.total_s > 0
    assert f"{estimate.rows:,} Jacobian rows" in estimate.line()

    check_budget(estimate, None, config, None, "sub-01")  # no budget: goes ahead
    check_budget(estimate, estimate.total_s * 2, config, None, "sub-01")
    with pytest.raises(ConfigurationError) as refused:
        check_budget(estimate, estimate.total_s / 2, config, 3, "sub-01")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("sub-01: the saliency stage would take about")
    for choice in ("--max-lesions", "now 3", "--n-samples", "--aggregation mean", "a GPU", "--yes"):
        assert choice in message


@pytest.mark.parametrize(("rows_s", "voxels"), [(0.0, 2), (1e9, cost.CALIBRATION_VOXELS)])
def test_the_measurement_times_fewer_voxels_where_a_pass_is_slow(
    monkeypatch: pytest.MonkeyPatch, rows_s: float, voxels: int
) -> None:
    """The blob shrinks to two voxels where one single-voxel pass exceeds the time allowed for
    the rows, and stays at sixteen where it fits; progress names the measurement, pass by pass."""
    blobs: list[int] = []
    compact = cost._compact

    def spy(mask: torch.Tensor, count: int) -> torch.Tensor:
        blobs.append(count)
        return compact(mask, count)

    monkeypatch.setattr(cost, "_compact", spy)
    monkeypatch.setattr(cost, "CALIBRATION_ROWS_S", rows_s)
    large = torch.zeros(12, 12, 12, dtype=torch.bool)
    large[2:9, 2:9, 2:9] = True  # 343 voxels: room for either blob
    calls: list[tuple[str, int, int]] = []
    estimate = estimate_cost(
        _model(),
        torch.randn(2, 12, 12, 12),
        {1: large},
        SmoothGradConfig(n_samples=2),
        None,
        ExplainedPass(context="patch", patch_size=(6, 6, 6)),
        lambda stage, done, total: calls.append((stage, done, total)),
    )
    assert blobs == [1, voxels]
    assert estimate.seconds_per_row > 0
    assert calls == [(MEASURING, done, 4) for done in range(5)]


@pytest.fixture
def subject(tmp_path: Path) -> list[Path]:
    flair = np.full((14, 14, 14), 1.0, np.float32)
    flair[2:5, 2:5, 2:5] = 3.0
    flair[10:12, 10:12, 10:12] = 3.0
    t1w = np.full(flair.shape, 0.5, np.float32)
    t1w[0, 0, 0] = 0.6
    return write_channels(tmp_path, {"FLAIR": flair, "T1w": t1w})


class Brightness(nn.Module):
    """Lesion logit 4·(FLAIR − 2) after a 3×3×3 smoothing: non-linear in the probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0, 1, 1, 1] = 4.0
            bias = self.conv.bias
            assert bias is not None
            bias.copy_(torch.tensor([0.0, -8.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _brightness() -> nn.Module:
    model = Brightness()
    card = {"name": "bright", "architecture": "module", "normalisation": "none"}
    set_card(model, card | {"patch_size": [8, 8, 8], "threshold": 0.5})
    return model


def test_a_run_over_its_budget_stops_before_the_first_lesion(
    subject: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, context="patch"
    )
    with pytest.raises(ConfigurationError, match="over the budget of 0 s; choose"):
        explain_subject(subject, _brightness(), out, settings=settings, budget_s=0.0)
    assert not list((out / "lesions").glob("*.json")), "no lesion was explained"

    result = explain_subject(subject, _brightness(), out, settings=settings, budget_s=None)
    assert len(result.table) == 2
    timings = json.loads((out / "provenance.json").read_text())["timings"]
    assert timings["estimate_s"] > 0


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_progress_reaches_its_total(
    subject: list[Path], tmp_path: Path, aggregation: Aggregation
) -> None:
    """With mean aggregation a domain costs one row per draw, not one per voxel: the bar's
    total is what is done (it showed 1/109962 and an ETA of days for a run of seconds)."""
    calls: list[tuple[str, float, float]] = []
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2, aggregation=aggregation),
        gradcam=None,
        context="patch",
    )
    explain_subject(
        subject,
        _brightness(),
        tmp_path / aggregation,
        settings=settings,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
        report=False,
    )
    saliency = [(done, total) for stage, done, total in calls if stage.startswith("saliency")]
    done, total = saliency[-1]
    assert done == total
    expected = 2 * (27 + 8) if aggregation == "max" else 2 * 2
    assert total == expected


def test_scripts_get_progress_and_the_estimate_through_logging(
    subject: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No terminal (pytest captures standard error): the default progress writes its lines and
    the estimate to the ``instasal`` logger instead of nothing."""
    settings = ExplainSettings(
        smoothgrad=SmoothGradConfig(n_samples=2), gradcam=None, context="patch"
    )
    with caplog.at_level(logging.INFO, logger="instasal"):
        explain_subject(subject, _brightness(), tmp_path / "out", settings=settings, report=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "instasal"]
    assert any(m.startswith("segmenting: ") for m in messages)
    assert any("saliency stage: 2 domain(s), 70 Jacobian rows" in m for m in messages)
    assert any(m.startswith("saliency of lesion(s)") and "(100 %)" in m for m in messages)


def test_the_command_line_prints_the_estimate_and_refuses_over_budget(
    subject: list[Path], tmp_path: Path, linear_model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from instasal.cli import commands  # noqa: F401  (registers explain)
    from instasal.cli._app import run_app

    args = ["explain", *map(str, subject), "--model", str(linear_model_path), "--n-samples", "2"]
    args += ["--no-gradcam", "--context", "patch"]
    status = run_app([*args, "--out", str(tmp_path / "refused"), "--budget-hours", "0"])
    captured = capsys.readouterr()
    refused = captured.out + captured.err
    assert status == 2
    assert "over the budget of 0 s; choose explain fewer domains" in " ".join(refused.split())

    status = run_app([*args, "--out", str(tmp_path / "done"), "--budget-hours", "0", "--yes"])
    captured = capsys.readouterr()
    done = " ".join((captured.out + captured.err).split())
    assert status == 0
    assert "saliency stage: 2 domain(s)" in done
