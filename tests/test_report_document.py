"""The one base of instasal's HTML documents: saved, opened, shown in a notebook frame."""

from __future__ import annotations

import html
import re
import webbrowser
from pathlib import Path

import pytest

from instasal.errors import OutputExistsError
from instasal.report.document import HtmlDocument

PAGE = (
    '<!doctype html><html><body><p title="a &amp; b">x</p>'
    '<script>let y = "<b>";</script></body></html>'
)


def assert_notebook_frame(shown: str, page: str) -> None:
    """``shown`` is one iframe whose ``srcdoc``, unescaped, is ``page`` (nothing else leaks)."""
    found = re.fullmatch(r'<iframe srcdoc="([^"]*)" style="[^"]*" sandbox="[^"]*"></iframe>', shown)
    assert found is not None, shown[:200]
    assert html.unescape(found[1]) == page
    assert "<script" not in shown


def test_the_notebook_shows_the_page_in_a_frame() -> None:
    assert_notebook_frame(HtmlDocument(PAGE)._repr_html_(), PAGE)


def test_saving_refuses_an_existing_file_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    assert HtmlDocument(PAGE).save_as_html(path) == path
    assert path.read_text(encoding="utf-8") == PAGE
    with pytest.raises(OutputExistsError):
        HtmlDocument("other").save_as_html(path)
    HtmlDocument("other").save_as_html(path, overwrite=True)
    assert path.read_text(encoding="utf-8") == "other"


def test_opening_writes_the_page_and_hands_its_uri_to_the_browser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []

    def record(uri: str) -> bool:
        opened.append(uri)
        return True

    monkeypatch.setattr(webbrowser, "open", record)
    path = HtmlDocument(PAGE).open_in_browser()
    try:
        assert opened == [path.as_uri()]
        assert path.read_text(encoding="utf-8") == PAGE
    finally:
        path.unlink()
