"""The built-book checker (tests/browser/check_book.py) finds what it claims to find, on hand-made pages."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.browser import check_book

# a 1x1 PNG
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
needs_browser = pytest.mark.skipif(check_book.browser_available() is not None,
                                   reason="needs selenium, chromium and chromedriver")


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


def _output(data: dict, glued: str | None = None) -> dict:
    if glued:
        prefix = "application/papermill.record/"
        return {"output_type": "display_data", "data": {prefix + k: v for k, v in data.items()},
                "metadata": {"scrapbook": {"mime_prefix": prefix, "name": glued}}}
    return {"output_type": "display_data", "data": data, "metadata": {}}


def _png(content: str) -> dict:
    return {"image/png": base64.b64encode(content.encode()).decode(), "text/plain": "<Figure size 640x480 with 1 Axes>"}


def _notebook_page(root: Path, images_in_page: int, stderr: bool = False, figure_as_text: bool = False) -> Path:
    """A page ``ch.html`` and its notebook in ``_sources``: one inline image, one glued image shown twice
    ({glue:figure} and {glue}), one glued image never referenced: 3 images to show."""
    outputs = [[_output(_png("inline"))], [_output(_png("a"), glued="fig_a")], [_output(_png("unused"), glued="fig_unused")]]
    if figure_as_text:
        outputs[0].append(_output({"text/plain": "<Figure size 640x480 with 1 Axes>"}))
    cells = [*({"cell_type": "code", "source": "x", "metadata": {}, "outputs": o} for o in outputs),
             {"cell_type": "markdown", "metadata": {},
              "source": "```{glue:figure} fig_a\n:name: a\n\ncaption\n```\n\nagain: {glue}`fig_a`"}]
    (root / "_sources").mkdir(parents=True)
    (root / "_sources" / "ch.ipynb").write_text(json.dumps({"cells": cells}))
    noise = '<div class="output stderr highlight-myst-ansi"><pre>TqdmWarning</pre></div>' if stderr else ""
    imgs = '<img src="_images/ok.png">' * images_in_page
    (root / "ch.html").write_text(f"<html><head><title>c</title></head><body>{imgs}{noise}</body></html>")
    return root


def test_link_check_passes_a_sound_book_and_names_each_broken_link(tmp_path):
    problems, counts = check_book.check_links(_book(tmp_path / "good", broken=False))
    assert problems == [] and counts == {"internal": 4, "anchors": 2, "external": 1}
    problems, _ = check_book.check_links(_book(tmp_path / "bad", broken=True))
    assert len(problems) == 2
    assert "no element with id 'nowhere' in sub/page.html" in problems[0]
    assert "missing.html -> missing file missing.html" in problems[1]


def test_link_check_finds_a_script_from_the_network(tmp_path):
    (tmp_path / "index.html").write_text(
        '<html><head><title>t</title><script src="https://cdn.example.org/tex-chtml.js"></script></head></html>')
    problems, _ = check_book.check_links(tmp_path)
    assert problems == ["index.html: <script> https://cdn.example.org/tex-chtml.js needs the network"]


def test_expected_images_counts_inline_images_and_each_glue_reference(tmp_path):
    root = _notebook_page(tmp_path, images_in_page=3, figure_as_text=True)
    count, problems = check_book.expected_images(root / "_sources" / "ch.ipynb")
    assert count == 3
    assert problems == ["ch.ipynb: cell 0 holds a figure as text (<Figure size 640x480 with 1 Axes>), not an image"]


def test_expected_images_finds_a_glued_figure_shown_again_inline(tmp_path):
    root = _notebook_page(tmp_path, images_in_page=3)
    path = root / "_sources" / "ch.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][1]["outputs"].append(_output(_png("a")))  # fig_a left open: shown again inline
    rendered_again = {**_png("a, other pixels"), "text/plain": "<Figure size 100x100 with 2 Axes>"}
    nb["cells"].append({"cell_type": "code", "source": "y", "metadata": {}, "outputs": [
        _output({**_png("b"), "text/plain": "<Figure size 100x100 with 2 Axes>"}, glued="fig_b"),
        _output(rendered_again)]})
    path.write_text(json.dumps(nb))
    count, problems = check_book.expected_images(path)
    assert count == 5
    assert problems == [f"ch.ipynb: cell {i} shows the glued figure {name!r} a second time, inline (close the "
                        f"figure after glueing it)" for i, name in ((1, "fig_a"), (4, "fig_b"))]


def test_page_check_finds_stderr_outputs_and_missing_figures(tmp_path):
    problems, counts = check_book.check_pages(_notebook_page(tmp_path / "good", images_in_page=3))
    assert problems == [] and counts == {"notebooks": 1, "expected_images": 3}
    problems, _ = check_book.check_pages(_notebook_page(tmp_path / "bad", images_in_page=2, stderr=True))
    assert problems == ["ch.html: shows 1 stderr or error output(s) of its notebook",
                        "ch.html: 2 image(s) in the page, its notebook has 3 to show"]


@needs_browser
def test_browser_check_finds_an_image_that_does_not_decode(tmp_path):
    problems, counts = check_book.check_in_browser(_book(tmp_path / "good", broken=False), screenshots=())
    assert problems == [] and counts["pages"] == 2 and counts["images"] == 1
    problems, counts = check_book.check_in_browser(_book(tmp_path / "bad", broken=True), screenshots=())
    assert counts["images"] == 2
    assert problems == ["index.html: image '_images/empty.png' did not appear (naturalWidth 0)"]


MATH_PAGE = ('<html><head><title>m</title>{script}</head><body><p>Inline <span class="math">\\(a^2\\)</span>, '
             '<code>\\(code is fine\\)</code></p><div class="math">\\[b_i\\]</div><p>{prose}</p></body></html>')


def _mathjax() -> Path | None:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    return Path(spec.origin).parent / "static" / "mathjax" if spec else None


@needs_browser
def test_browser_check_finds_math_left_as_raw_tex(tmp_path):
    (tmp_path / "index.html").write_text(MATH_PAGE.format(script="", prose="and $$c$$ in prose"))
    problems, counts = check_book.check_in_browser(tmp_path, screenshots=())
    assert counts["math"] == 2
    assert problems[0] == "index.html: 2 of 2 math element(s) not rendered by MathJax"
    assert [p.split("raw TeX in the page: ")[1] for p in problems[1:]] == ["'\\\\(a^2\\\\)'", "'\\\\[b_i\\\\]'",
                                                                            "'and $$c$$ in prose'"]


@needs_browser
@pytest.mark.skipif(_mathjax() is None, reason="needs the sphinx-mathjax-offline package (book extra)")
def test_browser_check_passes_math_typeset_by_a_local_mathjax_and_takes_screenshots(tmp_path):
    shutil.copytree(_mathjax(), tmp_path / "_static" / "mathjax")
    (tmp_path / "index.html").write_text(MATH_PAGE.format(
        script='<script defer src="_static/mathjax/tex-chtml.js"></script>', prose="plain prose"))
    problems, counts = check_book.check_in_browser(tmp_path, screenshots=("index.html",))
    assert problems == [] and counts["math"] == 2 and counts["screenshots"] == 4
    shots = sorted(p.name for p in (tmp_path / check_book.SCREENSHOT_DIR).iterdir())
    assert shots == ["index-desktop-long.png", "index-desktop.png", "index-phone-long.png", "index-phone.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in (tmp_path / check_book.SCREENSHOT_DIR).iterdir())
