"""Check the built book in a real headless browser: pages load, math renders, figures appear, links resolve.

    python tests/browser/check_book.py _build/html [--static-only]

1. Pages (no browser): every ``href``/``src`` of every page that points inside the book must name
   an existing file, and a ``#fragment`` on an HTML page must name an element ``id`` (or ``name``)
   of that page. External links are counted, not fetched (the check runs offline); a script or
   stylesheet loaded from the network is a problem (the book must read the same offline). A page
   must show no stderr or error output of its notebook (``output stderr``/``output traceback``:
   warnings, progress bars, tracebacks), and a page built from a notebook (its copy in
   ``_sources/``) must hold at least as many ``<img>`` as the notebook has images to show: each
   image output that is not glued, plus each ``{glue}`` reference to a glued image. A figure
   stored as text (``<Figure size ...>`` without a PNG) and a glued figure shown again as an
   inline output (left open after ``glue``) are problems too.
2. Browser: the book is served on a localhost ``http.server`` and every page is opened in Debian's
   headless Chromium through ``selenium`` and ``/usr/bin/chromedriver``, with every host name but
   localhost unresolvable (no network). A page passes when it finishes loading with a title, every
   ``<img>`` has decoded (``naturalWidth > 0``), MathJax has typeset every ``.math`` element with
   no error node (``mjx-merror``) and no raw TeX delimiter (``\\(``, ``\\[``, ``$$``) is left in
   the page's text outside code, and the console shows no error from the book's own pages or files
   (failed resource, uncaught script error) beyond the toolchain's known harmless ones
   (:data:`KNOWN_CONSOLE`).
3. Screenshots: the introduction and every chapter page (:func:`screenshot_pages`: each executed
   notebook's page) at a phone and a desktop width (:data:`SCREEN_SIZES`), for a person to look at,
   go to ``<html_dir>/_screenshots/``: ``<page>-<size>.png`` is the first screen a reader sees,
   ``<page>-<size>-long.png`` the top :data:`SCREENSHOT_HEIGHT` pixels (the viewport made that tall).

Exit status: 0 all good, 1 problems found (each printed), 3 the browser is not available (nothing
is checked in the browser; ``--static-only`` runs the link check alone and exits 0/1).
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import re
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
                  "--disable-dev-shm-usage",
                  # the network is closed: only the local server answers
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
#: Sphinx's own folders: not pages of the book.
SKIP_DIRS = ("_static", "_sources", "_images", "_sphinx_design_static", "_panels_static")
#: Console errors of the toolchain itself, harmless and not ours to fix: sphinx-thebe's inline
#: script is emitted twice by jupyter-book 1.0 (its second ``const`` fails; thebe is off anyway),
#: pydata-sphinx-theme logs an empty stored theme mode, and Chromium asks for a favicon.
KNOWN_CONSOLE = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode",
                 "/favicon.ico")
LINK_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "iframe": "src", "source": "src"}
#: Output areas a reader must not see: stderr streams (warnings, progress bars) and tracebacks.
NOISE_CLASSES = ("stderr", "traceback")
#: The page photographed before the chapters, and the widths (CSS pixels) every photographed page is shown at.
SCREENSHOT_INTRO = "book/intro.html"
SCREEN_SIZES = {"phone": (390, 844), "desktop": (1366, 900)}
SCREENSHOT_HEIGHT = 4000
SCREENSHOT_DIR = "_screenshots"
_GLUE_REF = re.compile(r"\{glue(?::[a-z]+)?\}`([^`:]+)|[`:]{3,}\{glue(?::[a-z]+)?\}\s+(\S+)")
_FIGURE_AS_TEXT = re.compile(r"^<Figure size [^>]*>$")


@dataclass
class Page:
    ids: set[str] = field(default_factory=set)
    links: list[tuple[str, str]] = field(default_factory=list)  # (tag, url)
    images: int = 0
    noise: int = 0  # stderr/traceback output areas


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
        self.page.images += tag == "img"
        classes = (attrs.get("class") or "").split()
        if "output" in classes and any(c in classes for c in NOISE_CLASSES):
            self.page.noise += 1


def pages_of(html_dir: Path) -> list[Path]:
    """Every built HTML page, Sphinx's support folders left out."""
    return sorted(p for p in html_dir.rglob("*.html")
                  if not any(part in SKIP_DIRS for part in p.relative_to(html_dir).parts))


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> Page:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.page


def expected_images(notebook: Path) -> tuple[int, list[str]]:
    """How many images the page of an executed notebook must show, and the notebook's own problems
    (a figure stored as text; a glued figure also shown inline, the same picture twice in the page).
    Not glued image outputs show where they are; a glued one shows once per ``{glue}`` reference to
    its name in the markdown cells."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    refs: dict[str, int] = defaultdict(int)
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for match in _GLUE_REF.finditer("".join(cell.get("source", ""))):
                refs[match.group(1) or match.group(2)] += 1
    count, problems, glued_images, inline_images = 0, [], {}, []
    for i, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            glued = output.get("metadata", {}).get("scrapbook", {}).get("name")
            prefix = output.get("metadata", {}).get("scrapbook", {}).get("mime_prefix", "") if glued else ""
            text = "".join(data.get(prefix + "text/plain", "")).strip()
            images = ["".join(v) for key, v in sorted(data.items()) if key.startswith(prefix + "image/")]
            if not images:
                if _FIGURE_AS_TEXT.match(text):
                    problems.append(f"{notebook.name}: cell {i} holds a figure as text ({text}), not an image")
                continue
            count += refs.get(glued, 0) if glued else 1
            # the same figure: the same picture, or the same repr ("<Figure size ... with n Axes>") in the same cell
            keys = (images[0], (i, text))
            if glued:
                glued_images.update(dict.fromkeys(keys, glued))
            else:
                inline_images.append((i, keys))
    for i, keys in inline_images:
        name = next((glued_images[key] for key in keys if key in glued_images), None)
        if name:
            problems.append(f"{notebook.name}: cell {i} shows the glued figure {name!r} a second time, inline "
                            f"(close the figure after glueing it)")
    return count, problems


def check_pages(html_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Noise outputs and missing figures of every page (see the module docstring); returns
    (problems, counts)."""
    html_dir = html_dir.resolve()
    problems, counts = [], defaultdict(int)
    for page_path in pages_of(html_dir):
        name = page_path.relative_to(html_dir).as_posix()
        page = _parse(page_path)
        if page.noise:
            problems.append(f"{name}: shows {page.noise} stderr or error output(s) of its notebook")
        notebook = html_dir / "_sources" / Path(name).with_suffix(".ipynb")
        if notebook.is_file():
            counts["notebooks"] += 1
            expected, found = expected_images(notebook)
            problems += [f"{name}: {problem}" for problem in found]
            counts["expected_images"] += expected
            if page.images < expected:
                problems.append(f"{name}: {page.images} image(s) in the page, its notebook has {expected} to show")
    return problems, dict(counts)


def check_links(html_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Broken internal links and anchors of every page, and scripts or stylesheets it would load
    from the network; returns (problems, counts)."""
    html_dir = html_dir.resolve()
    problems, counts = [], defaultdict(int)
    for page_path in pages_of(html_dir):
        name = page_path.relative_to(html_dir).as_posix()
        for tag, url in _parse(page_path).links:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:", "data:")):
                counts["external"] += 1
                if parts.netloc and (tag == "script" or parts.path.endswith(".css")):
                    problems.append(f"{name}: <{tag}> {url} needs the network")
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
#: Waits for MathJax's typesetting (when MathJax is there), then reports .math elements left
#: untypeset, MathJax error nodes, and raw TeX delimiters in the page's text outside code.
_MATH_JS = r"""
const done = arguments[arguments.length - 1];
const report = () => {
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue;
    if (!/\\\(|\\\[|\$\$/.test(text)) continue;
    if (node.parentElement.closest('pre, code, script, style, textarea, mjx-container, .highlight')) continue;
    raw.push(text.trim().slice(0, 80));
  }
  done({math: document.querySelectorAll('.math').length,
        typeset: document.querySelectorAll('mjx-container').length,
        untypeset: Array.from(document.querySelectorAll('.math')).filter(e => !e.querySelector('mjx-container')).length,
        errors: document.querySelectorAll('mjx-merror').length, raw: raw});
};
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(report, report);
} else {
  report();
}
"""


def math_problems(name: str, math: dict) -> list[str]:
    """Problems in one page's :data:`_MATH_JS` report."""
    problems = []
    if math["untypeset"]:
        problems.append(f"{name}: {math['untypeset']} of {math['math']} math element(s) not rendered by MathJax")
    if math["errors"]:
        problems.append(f"{name}: {math['errors']} MathJax error(s)")
    problems += [f"{name}: raw TeX in the page: {text!r}" for text in math["raw"]]
    return problems


def screenshot_pages(html_dir: Path) -> tuple[str, ...]:
    """The pages photographed: the introduction and every chapter, i.e. every executed notebook's page
    (``book/executed/*.html``), in the book's order of names."""
    chapters = sorted(p.relative_to(html_dir).as_posix() for p in (html_dir / "book" / "executed").glob("*.html"))
    return (SCREENSHOT_INTRO, *chapters)


def save_screenshots(driver, base: str, html_dir: Path, pages) -> list[Path]:
    """The first screen and the top :data:`SCREENSHOT_HEIGHT` pixels of each page at each of
    :data:`SCREEN_SIZES`, as PNGs in ``<html_dir>/_screenshots``."""
    out = html_dir / SCREENSHOT_DIR
    out.mkdir(exist_ok=True)
    saved = []
    for page in pages:
        if not (html_dir / page).is_file():
            continue
        for label, (width, height) in SCREEN_SIZES.items():
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": label == "phone"})
            driver.get(base + page)
            driver.execute_async_script(_MATH_JS)  # typeset before the picture
            full = driver.execute_script("return document.documentElement.scrollHeight")
            for suffix, tall in (("", height), ("-long", min(full, SCREENSHOT_HEIGHT))):
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": width, "height": tall, "deviceScaleFactor": 1, "mobile": label == "phone"})
                shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
                path = out / f"{Path(page).stem}-{label}{suffix}.png"
                path.write_bytes(base64.b64decode(shot["data"]))
                saved.append(path)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return saved


def check_in_browser(html_dir: Path, timeout: float = 30.0, screenshots=None) -> tuple[list[str], dict[str, int]]:
    """Open every page in headless Chromium, then photograph ``screenshots`` (default: :func:`screenshot_pages`);
    returns (problems, counts)."""
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
        driver.set_script_timeout(timeout)
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
            math = driver.execute_async_script(_MATH_JS)
            counts["math"] += math["math"]
            problems += math_problems(name, math)
            for entry in driver.get_log("browser"):
                message = entry.get("message", "")
                if (entry.get("level") == "SEVERE" and base in message
                        and not any(known in message for known in KNOWN_CONSOLE)):
                    problems.append(f"{name}: console: {message}")
        pages = screenshot_pages(html_dir) if screenshots is None else screenshots
        counts["screenshots"] = len(save_screenshots(driver, base, html_dir, pages))
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
    page_problems, page_counts = check_pages(args.html_dir)
    problems += page_problems
    print(f"check_book: {page_counts.get('notebooks', 0)} notebook pages with "
          f"{page_counts.get('expected_images', 0)} images to show, stderr outputs looked for in every page")
    if not args.static_only:
        missing = browser_available()
        if missing:
            print(f"check_book: browser check not run, missing {missing}", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1 if problems else 3
        browser_problems, browser_counts = check_in_browser(args.html_dir)
        problems += browser_problems
        print(f"check_book: {browser_counts.get('pages', 0)} pages opened in headless Chromium offline, "
              f"{browser_counts.get('images', 0)} images decoded-checked, {browser_counts.get('math', 0)} math "
              f"elements typeset-checked, {browser_counts.get('screenshots', 0)} screenshots in "
              f"{args.html_dir / SCREENSHOT_DIR}")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    verdict = "ok" if not problems else f"{len(problems)} problem(s)"
    print(f"check_book: {verdict} in {time.perf_counter() - start:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
