"""Each ``instasal experiment`` command forwards every option it takes, unchanged, to the function
it calls: the run options as one :class:`ExperimentOptions`, the experiment's own options as
keywords of its ``run_*_experiment``, ``--overwrite`` to the writing step.

The experiment (its run and figure functions) and the writing step are replaced by recorders;
each command runs with every option set away from its default; the options the command declares
must be exactly those that reached a recorder (or the model loader), so an option added to a
command and forwarded nowhere fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import instasal.cli.experiment_commands  # registers the experiment commands
import instasal.experiments.catalogue
import instasal.experiments.results
import instasal.models
from instasal.cli import run_app
from instasal.cli._app import app
from instasal.experiments import EXPERIMENTS, Experiment, ExperimentOptions
from instasal.experiments.results import ExperimentResult
from instasal.typing import Context


class Forwarded(Exception):
    """Raised by the writing recorder once it has the call (the command stops there)."""


RESULT = object()
"""What the recorded experiment returns: the figure and the writing step must receive it."""

HANDLED_BY_THE_COMMAND = {"dataset", "out", "model", "overwrite", "trust_model_code"}
"""Options the command itself uses: the paths, the model loaded, and the writing step's."""

CLI_NAMES = {"volume_band_mm3": "band", "levels": "level", "ensemble": "models"}
"""Keywords whose command option has another name (the option names one value it repeats)."""

COMMANDS: dict[str, tuple[list[str], Context]] = {
    "context": (["--band", "10", "20", "--max-lesions", "7"], "patch"),
    "relocation": (["--max-lesions", "7"], "full"),
    "patch-vs-full": (["--max-lesions", "7"], "deployed"),
    "uncertainty": (
        [
            *("--method", "mc_dropout", "--signal", "sd", "--level", "0.1", "--level", "0.3"),
            *("--models", "unet", "--max-subjects", "2", "--n-samples", "3"),
            *("--max-explained", "5"),
        ],
        "patch",
    ),
}
"""Each command's own options, set away from their defaults, and a context other than its
default."""


@pytest.mark.parametrize("name", COMMANDS)
def test_every_experiment_option_reaches_the_function_it_calls(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own_options, context = COMMANDS[name]
    called = EXPERIMENTS[name]
    loaded: list[tuple[str, bool]] = []
    runs: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    writes: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def load(model: str, trust_code: bool) -> str:
        loaded.append((model, trust_code))
        return f"network {model}"

    def run(*args: Any, **kwargs: Any) -> object:
        runs.append((args, kwargs))
        return RESULT

    def write(*args: Any, **kwargs: Any) -> None:
        writes.append((args, kwargs))
        raise Forwarded

    figure = None if called.figure is None else (lambda result: ("figure of", result))
    recorded = Experiment(run, called.outputs, figure)  # type: ignore[arg-type]
    monkeypatch.setattr(instasal.models, "load_model", load)
    monkeypatch.setattr(instasal.experiments.catalogue, "EXPERIMENTS", {name: recorded})
    monkeypatch.setattr(instasal.experiments.results, "write_experiment", write)
    dataset, out = tmp_path / "dataset", tmp_path / "out"
    dataset.mkdir()
    arguments = [*("experiment", name, str(dataset), "--out", str(out), *own_options)]
    arguments += ["--seed", "5", "--context", context, "--ignore-channel-names"]
    arguments += ["--overwrite", "--trust-model-code"]
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, Forwarded), result.output

    ((args, kwargs),) = runs
    options = ExperimentOptions(seed=5, context=context, ignore_channel_names=True)
    assert args == (dataset, "network unet", options)
    assert kwargs.pop("progress") is not None
    parameters = inspect.signature(called.run).parameters
    for keyword, value in kwargs.items():
        assert keyword in parameters and parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY
        assert value != parameters[keyword].default, keyword  # the value given, not the default
    ((written, keywords),) = writes
    assert written == (RESULT, out, None if figure is None else ("figure of", RESULT))
    assert keywords == {"overwrite": True}
    assert loaded and all(trust for _, trust in loaded)

    group = typer.main.get_command(app).commands["experiment"]  # type: ignore[attr-defined]
    declared = {parameter.name for parameter in group.commands[name].params}
    forwarded = {CLI_NAMES.get(keyword, keyword) for keyword in kwargs}
    in_options = {field.name for field in dataclasses.fields(ExperimentOptions)}
    assert declared == HANDLED_BY_THE_COMMAND | in_options | forwarded


def test_the_command_refuses_its_files_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: Any, **kwargs: Any) -> ExperimentResult:
        raise AssertionError("the experiment ran")

    real = EXPERIMENTS["relocation"]
    monkeypatch.setattr(instasal.models, "load_model", lambda model, trust_code: model)
    monkeypatch.setattr(
        instasal.experiments.catalogue,
        "EXPERIMENTS",
        {"relocation": Experiment(run, real.outputs, real.figure)},
    )
    dataset, out = tmp_path / "dataset", tmp_path / "out"
    dataset.mkdir()
    out.mkdir()
    (out / "relocation.png").write_bytes(b"earlier")
    arguments = ["experiment", "relocation", str(dataset), "--out", str(out)]
    assert run_app([*arguments, "--ignore-channel-names"]) == 2
    assert "relocation.png: exists already" in capsys.readouterr().err
    assert (out / "relocation.png").read_bytes() == b"earlier"
