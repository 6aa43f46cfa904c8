"""Which pages the browser check photographs: the introduction and every chapter of the built book."""

from __future__ import annotations

from tests.browser import check_book


def test_every_chapter_page_is_photographed(tmp_path):
    executed = tmp_path / "book" / "executed"
    executed.mkdir(parents=True)
    for name in ("40_comparison", "00_quickstart", "21_fissionfusion_landscapes"):
        (executed / f"{name}.html").write_text("<html><title>x</title></html>")
    (tmp_path / "book" / "bibliography.html").write_text("<html><title>x</title></html>")
    assert check_book.screenshot_pages(tmp_path) == (
        "book/intro.html", "book/executed/00_quickstart.html", "book/executed/21_fissionfusion_landscapes.html",
        "book/executed/40_comparison.html")
