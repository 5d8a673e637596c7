"""One base for instasal's HTML documents (the subject report, the cohort report).

Each is one self-contained page: saved atomically (:meth:`HtmlDocument.save_as_html`, refusing an
existing file unless told), opened in the user's browser from a temporary file
(:meth:`HtmlDocument.open_in_browser`), and shown in a notebook inside an ``iframe`` (``srcdoc``):
the page keeps its own scripts and styles instead of pasting them into the notebook's.
"""

from __future__ import annotations

import html as html_escaping
import tempfile
import webbrowser
from dataclasses import dataclass
from pathlib import Path

from instasal.io import atomic_write_text
from instasal.typing import PathLike

__all__ = ["NOTEBOOK_HEIGHT_PX", "HtmlDocument"]

NOTEBOOK_HEIGHT_PX = 800
"""Height of the notebook frame (the page scrolls inside it)."""


@dataclass(frozen=True)
class HtmlDocument:
    """A self-contained HTML page."""

    html: str

    def save_as_html(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Write the page atomically to ``path``; return it.

        Raises
        ------
        OutputExistsError
            When ``path`` exists and ``overwrite`` is false.
        """
        return atomic_write_text(path, self.html, overwrite=overwrite)

    def open_in_browser(self) -> Path:
        """Write the page to a temporary file and open it in the default browser; return the
        file (left for the browser to read; the system's temporary folder clears it)."""
        with tempfile.NamedTemporaryFile(
            "w", suffix=".html", prefix="instasal-", delete=False, encoding="utf-8"
        ) as stream:
            stream.write(self.html)
        path = Path(stream.name)
        webbrowser.open(path.as_uri())
        return path

    def _repr_html_(self) -> str:
        """The page in an ``iframe`` for notebooks (its scripts and styles stay inside it)."""
        source = html_escaping.escape(self.html, quote=True)
        return (
            f'<iframe srcdoc="{source}" style="width: 100%; height: {NOTEBOOK_HEIGHT_PX}px; '
            'border: 0" sandbox="allow-scripts"></iframe>'
        )
