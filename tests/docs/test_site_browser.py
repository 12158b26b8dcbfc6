"""The built docs site in a real browser (Debian's chromium, headless, via Playwright): the
landing page's first screen, pages at a phone's 390 px with nothing wider than the screen,
tables and names readable, config keys as link targets, search that splits dotted and
underscored names, and the diagrams legible, dark-mode aware and opening full size."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.browser import WAIT_MS, needs_chromium

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, needs_chromium]


def _helpers() -> ModuleType:
    """docs/screenshots/take.py: how the screenshots build, serve and browse the site."""
    path = ROOT / "docs" / "screenshots" / "take.py"
    spec = importlib.util.spec_from_file_location("docs_screenshots_take", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


take = _helpers()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = take.build_site(tmp_path_factory.mktemp("docs") / "site")
    with take.serve(folder) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = take.launch(playwright)
        yield chromium
        chromium.close()


def open_page(browser: Any, url: str, viewport: dict[str, int], *,
              scheme: str = "light") -> Any:
    page = browser.new_page(viewport=viewport, color_scheme=scheme)
    page.set_default_timeout(WAIT_MS)
    page.goto(url, wait_until="networkidle")
    return page


OVERFLOWS = """() => {
  const width = document.documentElement.clientWidth;
  const found = [];
  if (document.documentElement.scrollWidth > width + 1) {
    found.push(`the page is ${document.documentElement.scrollWidth}px wide`);
  }
  const boxes = ".md-content pre, .md-content table, .md-content img, .md-typeset__scrollwrap";
  for (const el of document.querySelectorAll(boxes)) {
    const box = el.getBoundingClientRect();
    const what = `${el.tagName} ${el.textContent.slice(0, 60)}`;
    if (el.scrollWidth > el.clientWidth + 1) {
      found.push(`${what} scrolls: ${el.scrollWidth} > ${el.clientWidth}`);
    }
    if (box.right > width + 1 || box.left < -1) {
      found.push(`${what} sticks out: ${box.left}..${box.right}`);
    }
  }
  for (const cell of document.querySelectorAll(".md-content td")) {
    const box = cell.getBoundingClientRect();
    if (box.right > width + 1) {
      found.push(`cell off screen at ${box.right}px: ${cell.textContent.slice(0, 60)}`);
    }
  }
  return found;
}"""

# Names in table cells wrapped between two letters or digits (say `service_nam|e`): each
# character's line is found with a Range; a new line must start next to punctuation.
MID_WORD_BREAKS = """() => {
  const broken = [];
  for (const code of document.querySelectorAll('.md-content td code')) {
    const chars = [];
    const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.length; i++) {
        const range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        const rect = range.getBoundingClientRect();
        chars.push([node.data[i], rect.width > 0 ? Math.round(rect.top) : null]);
      }
    }
    let last = -1;
    for (let i = 0; i < chars.length; i++) {
      if (chars[i][1] === null) continue;
      if (last >= 0 && chars[i][1] > chars[last][1] + 2) {
        const around = chars.slice(last, i + 1).map(c => c[0]).join("");
        if (/^[A-Za-z0-9]+$/.test(around)) broken.push(code.textContent);
      }
      last = i;
    }
  }
  return broken;
}"""

PHONE_PAGES = ["", "install/", "reference/config/", "reference/cli/", "reference/transports/",
               "explanation/comparison/", "howto/write-a-transport/", "protocol/rpc/"]


def test_the_landing_page_shows_code_how_to_start_and_why_in_its_first_screen(
        site: str, browser: Any) -> None:
    page = open_page(browser, site, take.DESKTOP)
    try:
        height = take.DESKTOP["height"]
        code = page.locator(".bus-hero-code pre").first
        assert "class AuthApi(Api)" in code.inner_text()
        assert code.bounding_box()["y"] < height / 2
        for text in ("python3 dev.py demo", "python3 dev.py test", "Why Bus",
                     "Lightbus 1.x on the wire", "No lost events", "python3 dev.py bench"):
            box = page.get_by_text(text, exact=False).first.bounding_box()
            assert box is not None and box["y"] + box["height"] <= height, \
                f"{text!r} is below the first screen"
        assert page.evaluate(OVERFLOWS) == []
    finally:
        page.close()


@pytest.mark.parametrize("path", PHONE_PAGES, ids=lambda p: p or "landing")
def test_nothing_is_wider_than_a_phone(site: str, browser: Any, path: str) -> None:
    page = open_page(browser, site + path, take.PHONE)
    try:
        assert page.evaluate(OVERFLOWS) == []
    finally:
        page.close()


def test_reference_tables_are_readable_on_a_phone(site: str, browser: Any) -> None:
    page = open_page(browser, site + "reference/config/", take.PHONE)
    try:
        narrow = page.evaluate("""() => Array.from(document.querySelectorAll(
              '.md-content table:not([class]) td'))
            .filter(td => td.textContent.trim().length > 20 && td.clientWidth < 250)
            .map(td => `${td.clientWidth}px: ${td.textContent.slice(0, 40)}`)""")
        assert narrow == [], "cells squeezed on a phone"
        labels = page.evaluate("""() => Array.from(document.querySelectorAll(
              '.md-content td[data-label]')).map(td => getComputedStyle(td, '::before').content)""")
        assert '"Meaning: "' in labels and '"Default: "' in labels, \
            "cells are not labelled with their column on a phone"
    finally:
        page.close()


def test_names_in_tables_break_only_at_dots_and_underscores(site: str, browser: Any) -> None:
    for viewport in (take.DESKTOP, take.PHONE):
        page = open_page(browser, site + "reference/config/", viewport)
        try:
            broken = page.evaluate(MID_WORD_BREAKS)
            assert broken == [], f"names broken mid-word at {viewport['width']} px"
        finally:
            page.close()


def test_each_config_key_is_a_link_target(site: str, browser: Any) -> None:
    page = open_page(browser, site + "reference/config/#bus.drain_timeout", take.PHONE)
    try:
        target = page.locator('[id="bus.drain_timeout"]')
        assert target.count() == 1
        box = target.bounding_box()
        assert box is not None and 0 <= box["y"] < take.PHONE["height"], \
            "the page did not scroll to the key"
    finally:
        page.close()


def test_search_splits_dotted_and_underscored_names(site: str, browser: Any) -> None:
    expected = sum("drain_timeout" in p.read_text(encoding="utf-8")
                   for p in (ROOT / "docs").rglob("*.md"))
    page = open_page(browser, site, take.DESKTOP)
    try:
        search = page.locator(".md-search__input")
        search.click()
        search.type("drain_timeout", delay=20)  # Material searches on key strokes
        page.wait_for_selector(".md-search-result__item", timeout=WAIT_MS)
        meta = page.locator(".md-search-result__meta").inner_text()
        found = int("".join(ch for ch in meta if ch.isdigit()) or 0)
        assert found >= expected, f"search found {meta!r}; {expected} pages have it"
        search.fill("")
        search.type("bus.drain_timeout", delay=20)
        page.wait_for_function("""() => /\\d+ matching/.test(
            document.querySelector('.md-search-result__meta').textContent)""")
        assert page.locator(".md-search-result__item").count() > 0
    finally:
        page.close()


def test_searching_install_finds_the_install_page_first(site: str, browser: Any) -> None:
    page = open_page(browser, site, take.DESKTOP)
    try:
        search = page.locator(".md-search__input")
        search.click()
        search.type("install", delay=20)
        page.wait_for_selector(".md-search-result__item", timeout=WAIT_MS)
        first = page.locator(".md-search-result__item a").first.get_attribute("href") or ""
        assert first.split("#")[0].rstrip("/").endswith("install"), first
    finally:
        page.close()


def test_diagrams_are_legible_on_a_phone_and_open_full_size(site: str, browser: Any) -> None:
    page = open_page(browser, site + "explanation/delivery/", take.PHONE)
    try:
        diagrams = page.evaluate("""() => Array.from(document.querySelectorAll(
              '.md-content img[src*="diagrams/"]')).map(img => ({
                src: img.getAttribute('src'), width: img.clientWidth,
                natural: img.naturalWidth,
                link: img.closest('a') ? img.closest('a').getAttribute('href') : null}))""")
        assert len(diagrams) >= 2
        for diagram in diagrams:
            assert diagram["natural"] == 440, diagram
            assert diagram["link"] == diagram["src"], "a diagram that does not open full size"
            assert 14 * diagram["width"] / diagram["natural"] >= 11, \
                f"text of {diagram['src']} is under 11 px on a phone"
    finally:
        page.close()


@pytest.mark.parametrize(("scheme", "dark_text"), [("light", True), ("dark", False)])
def test_diagrams_follow_the_colour_scheme(site: str, browser: Any, scheme: str,
                                           dark_text: bool) -> None:
    page = open_page(browser, site + "diagrams/event-lifecycle.svg", take.PHONE, scheme=scheme)
    try:
        fill = page.evaluate("() => getComputedStyle(document.querySelector('text.t')).fill")
        red, green, blue = (int(part) for part in fill[fill.index("(") + 1:-1].split(","))
        luminance = (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255
        assert (luminance < 0.3) if dark_text else (luminance > 0.7), (scheme, fill)
    finally:
        page.close()
