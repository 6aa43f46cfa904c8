"""The built-book checker (tests/browser/check_book.py) finds what it claims to find."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.browser import check_book

# a 1x1 PNG
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def _book(root: Path, broken: bool) -> Path:
    (root / "_images").mkdir(parents=True)
    (root / "_images" / "ok.png").write_bytes(PIXEL)
    (root / "_images" / "empty.png").write_bytes(b"not a png")
    (root / "sub").mkdir()
    extra = ('<a href="sub/page.html#nowhere">x</a><a href="missing.html">y</a>'
             '<img src="_images/empty.png">') if broken else ""
    (root / "index.html").write_text(
        f'<html><head><title>t</title></head><body><img src="_images/ok.png"><a href="sub/page.html#here">a</a>'
        f'<a href="https://example.org/">e</a><a href="#top" id="top">self</a>{extra}</body></html>')
    (root / "sub" / "page.html").write_text(
        '<html><head><title>p</title></head><body><h1 id="here">h</h1><a href="../index.html">up</a></body></html>')
    return root


def test_link_check_passes_a_sound_book_and_names_each_broken_link(tmp_path):
    problems, counts = check_book.check_links(_book(tmp_path / "good", broken=False))
    assert problems == [] and counts == {"internal": 4, "anchors": 2, "external": 1}
    problems, _ = check_book.check_links(_book(tmp_path / "bad", broken=True))
    assert len(problems) == 2
    assert "no element with id 'nowhere' in sub/page.html" in problems[0]
    assert "missing.html -> missing file missing.html" in problems[1]


@pytest.mark.skipif(check_book.browser_available() is not None, reason="needs selenium, chromium and chromedriver")
def test_browser_check_finds_an_image_that_does_not_decode(tmp_path):
    problems, counts = check_book.check_in_browser(_book(tmp_path / "good", broken=False))
    assert problems == [] and counts == {"pages": 2, "images": 1}
    problems, counts = check_book.check_in_browser(_book(tmp_path / "bad", broken=True))
    assert counts["images"] == 2
    assert problems == ["index.html: image '_images/empty.png' did not appear (naturalWidth 0)"]
