"""Check the built book in a real headless browser: pages load, figures appear, internal links resolve.

    python tests/browser/check_book.py _build/html [--static-only]

1. Links (no browser): every ``href``/``src`` of every page that points inside the book must name
   an existing file, and a ``#fragment`` on an HTML page must name an element ``id`` (or ``name``)
   of that page. External links are counted, not fetched (the check runs offline).
2. Browser: the book is served on a localhost ``http.server`` and every page is opened in Debian's
   headless Chromium through ``selenium`` and ``/usr/bin/chromedriver``. A page passes when it
   finishes loading with a title, every ``<img>`` has decoded (``naturalWidth > 0``), and the
   console shows no error from the book's own pages or files (failed resource, uncaught script
   error) beyond the toolchain's known harmless ones (:data:`KNOWN_CONSOLE`).

Exit status: 0 all good, 1 problems found (each printed), 3 the browser is not available (nothing
is checked in the browser; ``--static-only`` runs the link check alone and exits 0/1).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
#: Sphinx's own folders: not pages of the book.
SKIP_DIRS = ("_static", "_sources", "_images", "_sphinx_design_static", "_panels_static")
#: Console errors of the toolchain itself, harmless and not ours to fix: sphinx-thebe's inline
#: script is emitted twice by jupyter-book 1.0 (its second ``const`` fails; thebe is off anyway),
#: pydata-sphinx-theme logs an empty stored theme mode, and Chromium asks for a favicon.
KNOWN_CONSOLE = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode",
                 "/favicon.ico")
LINK_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "iframe": "src", "source": "src"}


@dataclass
class Page:
    ids: set[str] = field(default_factory=set)
    links: list[tuple[str, str]] = field(default_factory=list)  # (tag, url)


class _PageParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.page = Page()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.page.ids.add(attrs[key])
        wanted = LINK_ATTRS.get(tag)
        if wanted and attrs.get(wanted):
            self.page.links.append((tag, attrs[wanted]))


def pages_of(html_dir: Path) -> list[Path]:
    """Every built HTML page, Sphinx's support folders left out."""
    return sorted(p for p in html_dir.rglob("*.html")
                  if not any(part in SKIP_DIRS for part in p.relative_to(html_dir).parts))


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> Page:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.page


def check_links(html_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Broken internal links and anchors of every page; returns (problems, counts)."""
    html_dir = html_dir.resolve()
    problems, counts = [], defaultdict(int)
    for page_path in pages_of(html_dir):
        name = page_path.relative_to(html_dir).as_posix()
        for tag, url in _parse(page_path).links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:", "data:")):
                counts["external"] += 1
                continue
            path = unquote(parts.path)
            target = page_path if not path else (page_path.parent / path).resolve()
            if path.endswith("/") or (target.is_dir() and path):
                target = target / "index.html"
            counts["internal"] += 1
            if not target.is_relative_to(html_dir):
                problems.append(f"{name}: <{tag}> {url} points outside the book")
            elif not target.is_file():
                problems.append(f"{name}: <{tag}> {url} -> missing file {target.relative_to(html_dir)}")
            elif parts.fragment and target.suffix == ".html":
                counts["anchors"] += 1
                if unquote(parts.fragment) not in _parse(target).ids:
                    problems.append(f"{name}: <{tag}> {url} -> no element with id "
                                    f"{parts.fragment!r} in {target.relative_to(html_dir)}")
    return problems, dict(counts)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(html_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A localhost server of ``html_dir`` on a free port, in a daemon thread; returns it and its URL."""
    handler = functools.partial(_Quiet, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def browser_available() -> str | None:
    """None when selenium, Chromium and chromedriver are all there, else what is missing."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -c constraints.txt selenium)")
    if not any(Path(c).is_file() for c in CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    if not Path(CHROMEDRIVER).is_file():
        missing.append("chromedriver (apt-get install chromium-driver)")
    return "; ".join(missing) or None


_IMAGES_JS = """
return Array.from(document.images).map(i => [i.getAttribute('src') || '', i.complete, i.naturalWidth]);
"""


def check_in_browser(html_dir: Path, timeout: float = 30.0) -> tuple[list[str], dict[str, int]]:
    """Open every page in headless Chromium; returns (problems, counts)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    html_dir = html_dir.resolve()
    problems, counts = [], defaultdict(int)
    profile = tempfile.mkdtemp(prefix="check_book_chromium_")
    options = webdriver.ChromeOptions()
    options.binary_location = next(c for c in CHROMIUM if Path(c).is_file())
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    server, base = serve(html_dir)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(timeout)
        for page_path in pages_of(html_dir):
            name = page_path.relative_to(html_dir).as_posix()
            counts["pages"] += 1
            try:
                driver.get(base + name)
            except Exception as err:  # timeout, connection refused, ...
                problems.append(f"{name}: did not load: {type(err).__name__}: {err}")
                continue
            deadline = time.monotonic() + timeout
            images = driver.execute_script(_IMAGES_JS)
            while any(not done for _, done, _ in images) and time.monotonic() < deadline:
                time.sleep(0.1)
                images = driver.execute_script(_IMAGES_JS)
            if not driver.title.strip():
                problems.append(f"{name}: loaded without a title")
            for src, _, width in images:
                counts["images"] += 1
                if not width:
                    problems.append(f"{name}: image {src!r} did not appear (naturalWidth 0)")
            for entry in driver.get_log("browser"):
                message = entry.get("message", "")
                if (entry.get("level") == "SEVERE" and base in message
                        and not any(known in message for known in KNOWN_CONSOLE)):
                    problems.append(f"{name}: console: {message}")
    finally:
        driver.quit()
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    return problems, dict(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--static-only", action="store_true", help="check links only, without a browser")
    args = parser.parse_args(argv)
    if not (args.html_dir / "index.html").is_file():
        print(f"check_book: {args.html_dir}/index.html does not exist; build the book first", file=sys.stderr)
        return 1
    start = time.perf_counter()
    problems, counts = check_links(args.html_dir)
    print(f"check_book: {len(pages_of(args.html_dir))} pages, {counts.get('internal', 0)} internal links "
          f"({counts.get('anchors', 0)} with anchors) checked, {counts.get('external', 0)} external not fetched")
    if not args.static_only:
        missing = browser_available()
        if missing:
            print(f"check_book: browser check not run, missing {missing}", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1 if problems else 3
        browser_problems, browser_counts = check_in_browser(args.html_dir)
        problems += browser_problems
        print(f"check_book: {browser_counts.get('pages', 0)} pages opened in headless Chromium, "
              f"{browser_counts.get('images', 0)} images decoded-checked")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    verdict = "ok" if not problems else f"{len(problems)} problem(s)"
    print(f"check_book: {verdict} in {time.perf_counter() - start:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
