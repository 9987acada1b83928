"""What the browser tests share: a headless Chromium (module-scoped), a fresh page per test that
records its errors, and opening the dashboard. A missing Chromium or Playwright fails in CI
(env CI set) and skips elsewhere.

Test modules import the fixtures under their function names (`browser_fixture`, `page_fixture`);
pytest knows them as `browser` and `page`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LIVE = "document.querySelector('#conn')?.textContent === 'live'"  # false on the sign-in page


def _missing(what: str) -> None:
    # CI must run these tests; a developer without Chromium just skips them.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _missing("Chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Python Playwright")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="page")
def page_fixture(browser: Any) -> Iterator[Any]:
    """A fresh page that records uncaught exceptions and console errors in `page.errors`."""
    # bypass_csp: Playwright's wait_for_function evaluates its predicate with eval, which the
    # dashboard's Content-Security-Policy forbids (test_trust_browser.py checks the page under it).
    page = browser.new_page(viewport={"width": 1400, "height": 1250}, bypass_csp=True)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
    page.on("console", lambda m: page.errors.append(f"console.error: {m.text}") if m.type == "error" else None)
    page.set_default_timeout(30_000)
    yield page
    page.close()


def open_dashboard(page: Any, server: Any, query: str = "") -> None:
    """Sign in with a one-time link and open the dashboard (`query` adds state, e.g.
    "&runs=a,b"), then wait for the live connection and the first run list (which makes the
    selection a link without `runs=` starts with: a test that changes it must come after)."""
    page.goto(server.browser_url + query)
    page.wait_for_url(lambda url: urlsplit(url).path == "/")  # the sign-in page goes on to the dashboard
    page.wait_for_function(LIVE)
    page.wait_for_function("gradwatch.listed")


def screenshot_whole_page(page: Any, path: Any) -> None:
    """A picture of the whole page with every chart drawn: the viewport is made as tall as the
    page (figures out of view are not drawn), then the heatmap and profiles get a moment."""
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": height})
    shown = "gradwatch.charts.jobs.filter(j => j.fig.div.offsetParent !== null)"  # not in a hidden card
    page.wait_for_function(f"{shown}.every(j => j.visible)")
    page.wait_for_function(f"{shown}.every(j => !j.fig.urgent?.(j.runs(), gradwatch.charts.view))")
    page.wait_for_timeout(1500)  # a paced redraw or two of whatever arrived meanwhile
    page.screenshot(path=str(path), full_page=True)
