"""The typer application and its one-line error handling."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from instasal.errors import (
    ImageError,
    InstasalError,
    InstasalWarning,
    describe_os_error,
)
from instasal.model_sources import BUILTIN_MODELS, model_source

ImagesArgument = Annotated[
    list[Path], typer.Argument(help="One NIfTI per channel in the model's order (FLAIR first).")
]


def output_path(value: str) -> Path:
    """An output path option's value: refused when empty, which ``Path`` would silently read as
    the working folder."""
    if value == "":
        raise typer.BadParameter("empty path; give a folder (. for the working folder)")
    return Path(value)


OutOption = Annotated[
    Path, typer.Option("--out", "-o", parser=output_path, help="Output folder (required).")
]


def builtin_model_names() -> list[str]:
    """Names of the built-in models, as :func:`instasal.models.available_models` (no torch)."""
    return list(BUILTIN_MODELS)


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help=f"Built-in model ({', '.join(builtin_model_names())}) or a path: a TorchScript .pt "
        "file, a MONAI bundle folder (configs/ and models/), an nnU-Net v2 results folder, or "
        "module:factory=weights.pt.",
    ),
]
OverwriteOption = Annotated[
    bool, typer.Option(help="Replace results of an earlier run (default: refuse to).")
]
TrustOption = Annotated[
    bool,
    typer.Option(
        "--trust-model-code",
        help="Let the model's own files run code (MONAI bundle expressions and references); "
        "only for models you trust. Default: refused.",
    ),
]
IgnoreChannelNamesOption = Annotated[
    bool,
    typer.Option(
        "--ignore-channel-names",
        help="Take the images as the model's channels in the order given even where their file "
        "names (BIDS suffixes such as _T1w, nnU-Net numbers such as _0001) say otherwise.",
    ),
]


def require_channel_order(images: Sequence[Path], models: Sequence[str], ignore: bool) -> None:
    """Refuse, before torch is imported, images whose names say another order than a model's.

    Only models whose card is a JSON file say their channels this early (built-in names, a card
    beside the weights, an nnU-Net ``dataset.json``); the others are checked once loaded.
    """
    if ignore:
        return
    from instasal.channels import check_channel_files, declared_channel_names

    for model in models:
        expected = declared_channel_names(model)
        if expected is not None:
            check_channel_files(images, expected, model=model)


def require_dataset_channel_order(dataset: Path, models: Sequence[str], ignore: bool) -> None:
    """:func:`require_channel_order` for every subject of a BIDS-like dataset."""
    if ignore:
        return
    from instasal.dataset import discover_dataset

    for subject in discover_dataset(dataset):
        require_channel_order(subject.images, models, ignore)


def require_files(*paths: Path | None) -> None:
    """Refuse, in one line, the first given input path that does not exist."""
    for path in paths:
        if path is not None and not path.exists():
            raise ImageError(f"{path}: file not found")


def check_model(model: str) -> None:
    """Refuse, in one line and before torch is imported, a model that ``load_model`` would not
    find: the same decision (:func:`instasal.model_sources.model_source`), so the same messages.
    What a file holds is checked when it is loaded.

    Raises
    ------
    ModelError
        On an unknown built-in name (the message lists the built-in models), a missing path, or a
        folder that is neither a MONAI bundle nor an nnU-Net v2 folder.
    """
    model_source(model)


def limit_torch_threads(threads: int) -> None:
    """Cap torch's CPU threads without importing torch when it is not imported yet.

    Before the import only ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set, which torch reads
    for its thread count when it starts; a command that refuses its options never starts torch.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


class CommandGroup(TyperGroup):
    """A command group whose ``--help`` lists each command's first paragraph whole (click cuts it
    at the terminal's width with "...")."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            first_paragraph = inspect.cleandoc(command.short_help or command.help or "")
            rows.append((name, " ".join(first_paragraph.split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="instasal",
    cls=CommandGroup,
    help="Instance-level quantitative saliency for 3D lesion segmentation networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: rich's option table has six columns and, at 80 columns, cuts option
    # names and values with an ellipsis (--n-true-negat…); click wraps the help text instead.
    rich_markup_mode=None,
)
console = Console(stderr=True, soft_wrap=True)  # never break paths across lines


@app.callback()
def _options(
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="torch CPU threads for every command, >= 1 (default: torch's own choice, "
            "all cores).",
        ),
    ] = None,
) -> None:
    """Instance-level quantitative saliency for 3D lesion segmentation networks."""
    if threads is not None:
        limit_torch_threads(threads)


def _show_note(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Print instasal's notes as one line each; other warnings as Python prints them."""
    if issubclass(category, InstasalWarning):
        note = escape(str(message))
        console.print(f"[bold yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


class _ConsoleLines(logging.Handler):
    """instasal's log records (the cost estimate, progress lines of the API) as plain lines."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(escape(record.getMessage()), highlight=False, soft_wrap=True)


@contextmanager
def _log_lines_shown() -> Iterator[None]:
    """instasal's log records printed for the length of one command; the logger's state is
    restored afterwards (an API call later in the same process logs as the caller set up)."""
    logger = logging.getLogger("instasal")
    handler, level, propagate = _ConsoleLines(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def run_app(argv: Sequence[str]) -> int:
    """Run the CLI on ``argv``; return the exit status (2, one line, on a user or OS error).

    instasal's notes (:class:`~instasal.errors.InstasalWarning`) are printed as ``note: …`` lines,
    its log records (the saliency stage's cost estimate) as plain lines.
    """
    warnings.showwarning = _show_note
    with _log_lines_shown():
        return _run_app(argv)


def _run_app(argv: Sequence[str]) -> int:
    try:
        status = app(args=list(argv), standalone_mode=False)
    except InstasalError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    except OSError as error:  # a full disk, a read-only or forbidden folder: the path and the fix
        message = describe_os_error(error)
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    except typer.Abort:
        console.print("[bold red]aborted[/]")
        return 130
    except KeyboardInterrupt:
        console.print(
            "[bold red]interrupted[/] (results written so far are kept; run again to resume)"
        )
        return 130
    except Exception as error:
        if isinstance(error, _usage_errors()):
            usage_error: Any = error  # click's and typer's classes share these attributes
            context = getattr(usage_error, "ctx", None)
            hint = f" (see: {context.command_path} --help)" if context is not None else ""
            message = escape(f"{usage_error.format_message()}{hint}")
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            return int(usage_error.exit_code)
        raise
    return status if isinstance(status, int) else 0


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error class and typer's vendored copy of it (typer ≥ 0.16 ships its own)."""
    import importlib

    found: list[type[Exception]] = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)
