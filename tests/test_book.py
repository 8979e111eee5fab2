"""Build the whole Jupyter Book once (smoke profile) and check what a reader would see.

The book is built outside the repository (``--path-output`` in a temp dir) with
``jupyter-book build --all -W -n --keep-going``, executing every notebook with the session's
shared ``PNORM_CACHE`` (see ``conftest.py``). Then:

* every page of ``_toc.yml`` exists as HTML;
* no cell output in the HTML is a traceback or an error written to stderr;
* headless Chromium (Debian's ``chromium`` driven by Playwright) loads every page from
  ``file://``: math is typeset by the vendored MathJax, chapter figures load, no raw TeX is left,
  widgets render, and the console shows no message (error, warning or log) except those of an
  explicit allow-list, each with its reason.
  Without ``chromium`` the browser tests are skipped, or fail when ``CI=true``.

``PNORM_BUILT_BOOK=. pytest tests/test_book.py`` runs the same checks on the book that
``scripts/build_book.sh`` built (the ``cpu`` profile) instead of building the smoke one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

from pnorm.plots import BOOK_COLUMN_PX

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 3600
PAGE_TIMEOUT_MS = 60_000
MATHJAX_START_MS = 10_000

# Chromium flags for these machines: headless and offline (no background networking, component
# updates or sync, no first-run page), no GPU, and no sandbox because the tests run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Console messages and uncaught page exceptions that are known and harmless: they come from
# third-party scripts of the book's theme and widgets, and the page still works.
# Each entry: (why it is harmless, regex on the message text, regex on its source URL or None).
# Every other message a page of the book logs, at any level, fails the test.
ALLOWED_CONSOLE_MESSAGES: list[tuple[str, str, str | None]] = [
    (
        "pydata-sphinx-theme logs which colour mode it chose and that it scrolled the sidebar",
        r"^\[PST\]: ",
        r"pydata-sphinx-theme\.js",
    ),
    (
        "sphinx-togglebutton logs how many folded cells it found",
        r"^\[togglebutton\]: Adding toggle buttons to \d+ items$",
        r"togglebutton\.js",
    ),
    (
        "html-manager's JSON-schema validator (ajv) warns in strict mode that the widget-state "
        "schema uses a union type; the state still validates and the widgets render",
        r"^strict mode: use allowUnionTypes",
        r"/html-manager/embed-amd\.js",
    ),
    (
        "sphinx-thebe inserts its configuration snippet twice",
        r"Identifier 'THEBE_JS_URL' has already been declared",
        None,
    ),
    (
        "pydata-sphinx-theme reads an empty theme mode before it is stored",
        r"Got invalid theme mode",
        None,
    ),
    (
        "html-manager requests its FontAwesome 4 font files relative to the page (icons only)",
        r"Failed to load resource",
        r"/@jupyter-widgets/(html-manager/dist/)?[0-9a-f]+\.(woff2?|ttf|eot|svg)\b",
    ),
    (
        "ipywidgets 8's StackView posts a resize message to a child view that a faster, later "
        "index change already removed; the last selected frame is still shown (checked by "
        "test_frame_sliders_change_the_figure_in_the_static_page)",
        r"Cannot read properties of null \(reading 'processLuminoMessage'\)",
        None,
    ),
    (
        "the book has no favicon",
        r"Failed to load resource",
        r"/favicon\.ico\b",
    ),
]

# Raw TeX delimiters that must not survive typesetting (outside code blocks).
RAW_TEX_RE = r"\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\n]{0,200}\\[A-Za-z]+[^$\n]{0,200}\$"
ERROR_WORD_RE = re.compile(r"Traceback|\b\w*(Error|Exception)\b")


# ---------------------------------------------------------------------------------------------
# table of contents


def toc_docnames(repo: Path = REPO_ROOT) -> list[str]:
    """Document names (paths without suffix) of ``_toc.yml``, root first, in reading order."""
    toc = yaml.safe_load((repo / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                names.append(str(Path(entry["file"]).with_suffix("")))
            for key in ("sections", "chapters", "parts"):
                walk(entry.get(key, []))

    for key in ("chapters", "parts", "sections"):
        walk(toc.get(key, []))
    return names


DOCNAMES = toc_docnames()
ROOT_DOC = DOCNAMES[0]


def is_chapter(docname: str) -> bool:
    return docname.startswith("notebooks/")


# ---------------------------------------------------------------------------------------------
# the build (once per session)


@dataclass(frozen=True)
class BuiltBook:
    out_dir: Path  # the --path-output folder; screenshots are written here
    html: Path  # the built HTML, <out_dir>/_build/html unless PNORM_BUILT_BOOK names one
    log: Path
    seconds: float

    def page(self, docname: str) -> Path:
        return self.html / f"{docname}.html"


def _jupyter_book_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("jupyter-book")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if found is None:
        pytest.fail("jupyter-book is not installed; run: bash scripts/setup.sh")
    return [found]


@pytest.fixture(scope="session")
def built_book(pnorm_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltBook:
    """Build the book once, smoke profile, shared PNORM_CACHE, output outside the repo.

    ``PNORM_BUILT_BOOK=<folder>`` checks a book already built there instead (e.g. ``.`` after
    ``bash scripts/build_book.sh``, which builds the ``cpu`` profile into ``_build/html``).
    """
    built = os.environ.get("PNORM_BUILT_BOOK", "").strip()
    if built:
        html = Path(built).resolve() / "_build" / "html"
        if not (html / "index.html").exists():
            pytest.fail(f"PNORM_BUILT_BOOK={built}: no built book at {html}; "
                        "build it with: bash scripts/build_book.sh")
        scratch = tmp_path_factory.mktemp("book")  # screenshots, never into the checkout
        return BuiltBook(out_dir=scratch, html=html, log=scratch / "build.log", seconds=0.0)
    vendor = REPO_ROOT / "_assets" / "vendor"
    if not (vendor / ".complete").exists():
        pytest.fail(f"{vendor} is missing or incomplete; run: bash scripts/vendor_js.sh")
    out_dir = tmp_path_factory.mktemp("book")
    log = out_dir / "build.log"
    cmd = [
        *_jupyter_book_cmd(),
        "build",
        "--all",
        "-W",
        "-n",
        "--keep-going",
        str(REPO_ROOT),
        "--path-output",
        str(out_dir),
    ]
    # as scripts/build_book.sh: no progress bars in the published pages
    env = {**os.environ, "PNORM_PROFILE": "smoke", "PNORM_CACHE": str(pnorm_cache_dir),
           "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"book build exceeded {BUILD_TIMEOUT_S} s; log: {log}")
    seconds = time.perf_counter() - start
    book = BuiltBook(out_dir=out_dir, html=out_dir / "_build" / "html", log=log, seconds=seconds)
    print(f"\n[test_book] built in {seconds:.1f} s -> {book.html} (log: {log})")
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-80:])
        pytest.fail(
            f"jupyter-book build failed (rc={proc.returncode}); log: {log}\n{tail}", pytrace=False
        )
    return book


def test_book_builds_without_execution_errors(built_book: BuiltBook) -> None:
    reports = sorted((built_book.html / "reports").glob("**/*.err.log"))
    details = "\n\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in reports)
    assert not reports, f"notebook execution failures were reported:\n{details}"
    assert (built_book.html / "index.html").exists()


def test_no_progress_bar_is_published(built_book: BuiltBook) -> None:
    """Progress bars (tqdm's "11/11 [00:10<00:00, 1.09it/s]") belong to a live run, not the book."""
    bar = re.compile(r"(?:it/s|s/it)\]|\d+%\|")
    shown = [d for d in DOCNAMES if built_book.page(d).exists()
             and bar.search(built_book.page(d).read_text(encoding="utf-8", errors="replace"))]
    assert not shown, f"pages with a progress bar in their outputs: {shown}"


def test_every_toc_page_is_built(built_book: BuiltBook) -> None:
    missing = [d for d in DOCNAMES if not built_book.page(d).exists()]
    assert not missing, f"pages in _toc.yml without HTML in {built_book.html}: {missing}"


# ---------------------------------------------------------------------------------------------
# error outputs in the static HTML


def find_error_outputs(html: str) -> list[str]:
    """Cell outputs in myst-nb HTML that show an error: tracebacks, or stderr naming an error.

    myst-nb renders a raised exception as ``div.output.traceback`` (or ``div.output.error``) and
    text written to stderr as ``div.output.stderr``.
    """
    soup = BeautifulSoup(html, "html.parser")
    found = []
    for div in soup.select("div.output.traceback, div.output.error"):
        found.append("traceback output: " + div.get_text(" ", strip=True)[:300])
    for div in soup.select("div.output.stderr"):
        text = div.get_text(" ", strip=True)
        if ERROR_WORD_RE.search(text):
            found.append("stderr output: " + text[:300])
    return found


def test_error_detector_flags_myst_nb_error_markup() -> None:
    """The detector below must be able to fail: feed it myst-nb's real markup."""
    traceback_html = (
        '<div class="cell_output docutils container"><div class="output traceback '
        'highlight-ipythontb notranslate"><div class="highlight"><pre><span></span>'
        "ValueError: boom</pre></div></div></div>"
    )
    stderr_html = (
        '<div class="cell_output docutils container"><div class="output stderr '
        'highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>'
        "Traceback (most recent call last):\n  RuntimeError: CUDA</pre></div></div></div>"
    )
    harmless_html = (
        '<div class="cell_output docutils container"><div class="output stderr '
        'highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>'
        "100%|##########| 5/5 [00:01&lt;00:00]</pre></div></div>"
        '<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre>'
        "error rate 0.1</pre></div></div></div>"
    )
    assert len(find_error_outputs(traceback_html)) == 1
    assert len(find_error_outputs(stderr_html)) == 1
    assert find_error_outputs(harmless_html) == []


@pytest.mark.parametrize("docname", DOCNAMES)
def test_no_error_outputs_in_html(built_book: BuiltBook, docname: str) -> None:
    page = built_book.page(docname)
    assert page.exists(), f"{page} was not built"
    errors = find_error_outputs(page.read_text(encoding="utf-8"))
    assert not errors, f"{docname}: error output in the rendered page:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# headless Chromium


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A headless Debian Chromium driven by Playwright (never ``playwright install``)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        msg = (
            "chromium not found on PATH; install it with `apt-get install -y chromium` "
            "(Debian/Ubuntu) to run the headless page checks"
        )
        if _ci():
            pytest.fail(f"CI=true: {msg}", pytrace=False)
        pytest.skip(msg)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the test extra installs playwright
        msg = f"playwright is not installed ({exc}); run: bash scripts/setup.sh"
        if _ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _allowed(text: str, url: str) -> bool:
    for _why, text_re, url_re in ALLOWED_CONSOLE_MESSAGES:
        if re.search(text_re, text) and (url_re is None or re.search(url_re, url or "")):
            return True
    return False


def _wait_for(page, js: str, timeout: int = PAGE_TIMEOUT_MS, arg: object = None) -> bool:
    """``page.wait_for_function`` that returns False on timeout instead of raising."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        page.wait_for_function(js, arg=arg, timeout=timeout)
    except PlaywrightTimeoutError:
        return False
    return True


JS_RAW_TEX = """(pattern) => {
  const re = new RegExp(pattern);
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight, .MathJax";
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility()) continue;
    if (re.test(node.textContent)) found.push(node.textContent.trim().slice(0, 200));
  }
  return found;
}"""

# The MathJax script itself (not e.g. our widgets-mathjax-shim.js).
JS_HAS_MATHJAX = """() => Array.from(document.scripts).some(
  (s) => /\\/mathjax(@[^/]*)?\\/|\\/tex-(mml-)?(chtml|svg)(-full)?\\.js/i.test(s.src))"""

# html-manager renders each embedded view into its own div.widget-subarea.
JS_VIEWS_RENDERED = """(n) => Array.from(document.querySelectorAll(".widget-subarea"))
  .filter((s) => s.querySelector(".jupyter-widgets")).length >= n"""

JS_FIGURES = """() => {
  const imgs = Array.from(document.querySelectorAll("div.cell_output img"));
  return {
    loaded: imgs.filter((i) => i.complete && i.naturalWidth > 0).length,
    broken: imgs.filter((i) => i.complete && i.naturalWidth === 0).map((i) => i.src.slice(0, 120)),
  };
}"""


# Cell outputs must fit the content column: wider content either wraps or scrolls inside an
# element of its own (overflow-x auto/scroll). Reports what spills over or is cut off, and the
# column's width (pnorm.plots.BOOK_COLUMN_PX assumes no less).
JS_OVERFLOW = """() => {
  const column = document.querySelector("article.bd-article") || document.querySelector("main");
  const right = column.getBoundingClientRect().right + 1;
  const scrolls = (el) => ["auto", "scroll"].includes(getComputedStyle(el).overflowX);
  const problems = [];
  for (const out of document.querySelectorAll("div.cell_output")) {
    for (const el of [out, ...out.querySelectorAll("*")]) {
      const style = getComputedStyle(el);
      if (style.display === "none" || !el.checkVisibility()) continue;
      const box = el.getBoundingClientRect();
      const describe = () => `${el.tagName.toLowerCase()} "${(el.innerText || el.alt || "")
        .trim().slice(0, 60)}"`;
      if (style.overflowX === "hidden" && el.scrollWidth > el.clientWidth + 1) {
        problems.push(`cut off: ${describe()}`);
      } else if (box.right > right) {
        let up = el.parentElement, inside = false;
        while (up && up !== out.parentElement) {
          if (scrolls(up) && up.getBoundingClientRect().right <= right) { inside = true; break; }
          up = up.parentElement;
        }
        if (!inside) problems.push(`spills ${Math.round(box.right - right)} px: ${describe()}`);
      }
    }
  }
  const pad = parseFloat(getComputedStyle(column).paddingLeft) +
              parseFloat(getComputedStyle(column).paddingRight);
  return {problems: problems.slice(0, 10), column: column.clientWidth - pad};
}"""


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_in_headless_chromium(built_book: BuiltBook, browser, docname: str) -> None:
    path = built_book.page(docname)
    assert path.exists(), f"{path} was not built"
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    console_errors: list[str] = []

    def on_console(msg) -> None:
        url = (msg.location or {}).get("url", "")
        if not _allowed(msg.text, url):
            console_errors.append(f"console.{msg.type}: {msg.text} (at {url})")

    def on_pageerror(exc) -> None:
        if not _allowed(str(exc), ""):
            console_errors.append(f"uncaught exception: {exc}")

    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    try:
        page.goto(path.as_uri(), wait_until="load", timeout=PAGE_TIMEOUT_MS)

        # MathJax: wait until the vendored script has started and finished typesetting.
        has_mathjax = page.evaluate(JS_HAS_MATHJAX)
        if has_mathjax:
            # The script is deferred, so it has run by "load"; startup then typesets the page.
            started = _wait_for(
                page,
                "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                timeout=MATHJAX_START_MS,
            )
            if not started:
                pytest.fail(
                    f"{docname}: MathJax never started within {MATHJAX_START_MS} ms; is "
                    "_assets/vendor/mathjax complete? run: bash scripts/vendor_js.sh",
                    pytrace=False,
                )
            page.evaluate(
                "() => { MathJax.startup.promise.then(() => { window.__pnormTypeset = true; }); }"
            )
            if not _wait_for(page, "() => window.__pnormTypeset === true"):
                pytest.fail(f"{docname}: MathJax did not finish typesetting", pytrace=False)
        n_math = page.locator("mjx-container").count()
        math_errors = page.evaluate(
            "() => Array.from(document.querySelectorAll('mjx-merror'))"
            ".map((e) => e.getAttribute('data-mjx-error') || e.textContent)"
        )

        # ipywidgets: every embedded widget view must be rendered by the vendored html-manager.
        n_views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
        if n_views:
            rendered = _wait_for(
                page,
                JS_VIEWS_RENDERED,
                arg=n_views,
            )
            if not rendered:
                pytest.fail(
                    f"{docname}: {n_views} widget view(s) embedded but not rendered "
                    "(require.js / html-manager missing?)",
                    pytrace=False,
                )

        page.wait_for_timeout(300)  # let late errors (e.g. from widget views) reach the console
        figures = page.evaluate(JS_FIGURES)
        overflow = page.evaluate(JS_OVERFLOW)
        raw_tex = page.evaluate(JS_RAW_TEX, RAW_TEX_RE)

        shots = built_book.out_dir / "screenshots"
        shots.mkdir(exist_ok=True)
        shot = shots / (docname.replace("/", "__") + ".png")
        page.screenshot(path=str(shot), full_page=True)
        print(f"\n[test_book] screenshot of {docname}: {shot}")

        # Move the first slider from the keyboard: linked views update on the client side, and
        # an exception in any of them (e.g. the FontAwesome/Play clash) reaches the console.
        handles = page.locator(".jupyter-widgets .noUi-handle")
        if n_views and handles.count():
            handles.first.focus()
            for _ in range(2):
                page.keyboard.press("ArrowRight")
            page.wait_for_timeout(300)
    finally:
        page.close()

    problems = []
    if docname == ROOT_DOC or is_chapter(docname):
        if n_math < 1:
            problems.append("no typeset math (expected at least one mjx-container)")
    if is_chapter(docname) and figures["loaded"] < 1:
        problems.append("no figure image loaded in the cell outputs")
    if overflow["problems"]:
        problems.append("output wider than the page: " + "; ".join(overflow["problems"]))
    if is_chapter(docname) and overflow["column"] < BOOK_COLUMN_PX:
        problems.append(f"content column {overflow['column']:.0f} px < the {BOOK_COLUMN_PX} px "
                        "that pnorm.plots.smallest_text assumes")
    if figures["broken"]:
        problems.append(f"broken images in cell outputs: {figures['broken']}")
    if math_errors:
        problems.append(f"MathJax errors: {math_errors}")
    if raw_tex:
        problems.append(f"raw TeX left in visible text: {raw_tex[:5]}")
    if console_errors:
        problems.append("console messages:\n  " + "\n  ".join(console_errors))
    assert not problems, f"{docname} ({path}):\n- " + "\n- ".join(problems)


# ---------------------------------------------------------------------------------------------
# sliders over precomputed frames (pnorm.widgets.frame_slider) move without a kernel

# Pages that must carry at least this many frame sliders.
SLIDER_PAGES = {"notebooks/05-pruning": 1, "notebooks/06-ambiguity": 1}

JS_FRAME = """async (box) => {
  const imgs = Array.from(box.querySelectorAll("img")).filter((i) => i.checkVisibility());
  if (imgs.length !== 1) return {count: imgs.length};
  const buf = await (await fetch(imgs[0].src)).arrayBuffer();
  const digest = await crypto.subtle.digest("SHA-256", buf);
  const hex = Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, "0"));
  const readout = box.querySelector(".widget-readout");
  const handle = box.querySelector("[role=slider]");
  return {count: 1, digest: hex.join(""), readout: readout ? readout.innerText.trim() : null,
          spoken: handle ? handle.getAttribute("aria-valuetext") : null};
}"""


def _press(page, key: str, times: int, pause_ms: int) -> None:
    for _ in range(times):
        page.keyboard.press(key)
        if pause_ms:
            page.wait_for_timeout(pause_ms)


def test_slider_pages_are_listed_in_the_toc() -> None:
    assert set(SLIDER_PAGES) <= set(DOCNAMES)


@pytest.mark.parametrize("docname", sorted(SLIDER_PAGES))
def test_frame_sliders_change_the_figure_in_the_static_page(
    built_book: BuiltBook, browser, docname: str
) -> None:
    """Drive each slider with the keyboard in headless Chromium: the shown PNG must change."""
    path = built_book.page(docname)
    assert "pnorm-frame-slider" in path.read_text(encoding="utf-8"), (
        f"{docname}: no frame slider in the embedded widget state")
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    try:
        page.goto(path.as_uri(), wait_until="load", timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector(".pnorm-frame-slider .noUi-handle", timeout=PAGE_TIMEOUT_MS)
        boxes = page.locator(".pnorm-frame-slider")
        assert boxes.count() >= SLIDER_PAGES[docname]
        for i in range(boxes.count()):
            box = boxes.nth(i)
            box.scroll_into_view_if_needed()
            start = box.evaluate(JS_FRAME)
            assert start["count"] == 1, f"slider {i}: expected one visible frame, got {start}"
            handle = box.locator(".noUi-handle").first
            handle.focus()
            _press(page, "ArrowRight", 2, pause_ms=0)
            page.wait_for_timeout(300)
            moved = box.evaluate(JS_FRAME)
            assert moved["count"] == 1
            assert moved["readout"] != start["readout"], f"slider {i}: readout did not move"
            assert moved["spoken"] == moved["readout"], (
                f"slider {i}: screen readers hear {moved['spoken']!r}, the page shows "
                f"{moved['readout']!r} (aria-valuetext; see _assets/widgets-slider-aria.js)")
            assert moved["digest"] != start["digest"], (
                f"slider {i}: the readout moved ({start['readout']} -> {moved['readout']}) "
                "but the figure did not change")
            _press(page, "ArrowLeft", 2, pause_ms=0)
            page.wait_for_timeout(300)
            back = box.evaluate(JS_FRAME)
            assert (back["readout"], back["digest"]) == (start["readout"], start["digest"]), (
                f"slider {i}: moving back did not restore the first frame")
            # A fast drag (no pause between steps) must end on the same frame as a slow one.
            _press(page, "ArrowRight", 6, pause_ms=0)
            page.wait_for_timeout(600)
            fast = box.evaluate(JS_FRAME)
            _press(page, "ArrowLeft", 6, pause_ms=250)
            _press(page, "ArrowRight", 6, pause_ms=250)
            page.wait_for_timeout(300)
            slow = box.evaluate(JS_FRAME)
            assert fast["count"] == 1 and (fast["readout"], fast["digest"]) == (
                slow["readout"], slow["digest"]), f"slider {i}: a fast drag ended on a wrong frame"
            print(f"\n[test_book] {docname} slider {i}: {start['readout']} -> "
                  f"{moved['readout']} -> {back['readout']} -> {fast['readout']}, frames differ")
    finally:
        page.close()
