"""``--help`` reads whole in an 80-column terminal: no option name, value or command summary cut."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from instasal.cli import app


def _commands() -> list[tuple[list[str], typer.core.TyperCommand]]:
    """Every command of the CLI with the words that call it."""
    root = typer.main.get_command(app)
    found = []
    stack: list[tuple[list[str], object]] = [([], root)]
    while stack:
        words, command = stack.pop()
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found.append((words, command))
            continue
        found.append((words, command))
        stack += [([*words, name], sub) for name, sub in subcommands.items()]
    return found  # type: ignore[return-value]


def _help(words: list[str]) -> str:
    done = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "80"})
    assert done.exit_code == 0, done.output
    return done.output


@pytest.mark.parametrize("words", [words for words, _ in _commands()], ids=" ".join)
def test_help_fits_80_columns_and_names_every_option_whole(words: list[str]) -> None:
    command = dict((" ".join(w), c) for w, c in _commands())[" ".join(words)]
    shown = _help(words)
    assert max(len(line) for line in shown.splitlines()) <= 80
    options_part = shown.split("Options:", 1)[1]
    listed = {word for word in re.split(r"[\s,/]+", options_part) if word.startswith("--")}
    for param in command.params:
        names = {name for name in (*param.opts, *param.secondary_opts) if name.startswith("--")}
        if not getattr(param, "hidden", False):
            assert names <= listed, f"{' '.join(words)}: {names - listed} cut or missing"
    # the ellipsis rich put in cut cells, and click's "..." after a cut command summary
    assert "…" not in options_part
    assert not re.search(r"\w\.\.\.$", shown, re.M)


def test_command_lists_show_each_command_summary_whole() -> None:
    shown = " ".join(_help([]).split())
    for words, command in _commands():
        if len(words) == 1:
            summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
            assert f"{words[0]} {summary}" in shown


def test_model_help_names_every_kind_of_model_path() -> None:
    shown = " ".join(_help(["explain"]).split())
    for kind in ("TorchScript", "MONAI bundle folder", "nnU-Net v2 results folder", "factory"):
        assert kind in shown
