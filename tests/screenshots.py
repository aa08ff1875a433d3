"""Screenshots of the web page (``/ui/``) in headless Chromium, for the README and for tests/test_web.py.

    python -m tests.screenshots http://localhost:3000 --out docs/

Needs Playwright for Python (the ``dev`` extra) and a Chromium binary (Debian: ``apt-get install chromium``);
Playwright's own browser download is not used.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium-family browser on this machine, or ``None``."""
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def load(page: Any, url: str) -> Any:
    """Go to ``url/ui/`` and wait until the backend list has loaded; returns ``page``."""
    page.goto(f"{url.rstrip('/')}/ui/")
    page.wait_for_selector("#backend:not([disabled])")
    return page


def open_page(browser: Any, url: str, viewport: dict[str, int]) -> Any:
    """A new page on ``url/ui/`` at ``viewport``, loaded."""
    return load(browser.new_page(viewport=viewport), url)


def show_example(page: Any, class_id: int = 9) -> None:
    """Classify a bundled test image and compare every backend on it.

    Waits use selectors only: the page's Content-Security-Policy forbids the ``eval`` that
    ``wait_for_function`` needs.
    """
    page.click(f"button.sample[data-class-id='{class_id}']")
    page.wait_for_selector("#result:not([hidden])")
    page.click("#compare-run")
    backends = page.locator("#backend option:not([disabled])").count()
    page.locator("#compare-grid .card").nth(backends - 1).wait_for()
    page.wait_for_selector("#compare-run:not([disabled])")


def capture(browser: Any, url: str, out: Path, viewport: dict[str, int], max_height: int | None = None) -> Path:
    """Open the page at ``viewport``, run :func:`show_example`, save a PNG of the whole page (or of its top
    ``max_height`` pixels) to ``out``; returns ``out``."""
    page = open_page(browser, url, viewport)
    try:
        show_example(page)
        clip = {"x": 0, "y": 0, "width": viewport["width"], "height": max_height} if max_height else None
        page.screenshot(path=str(out), full_page=True, clip=clip)
    finally:
        page.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the running service, e.g. http://localhost:3000")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default: docs)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        parser.error("no Chromium found (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            print(capture(browser, args.url, args.out / "web-ui.png", DESKTOP))
            print(capture(browser, args.url, args.out / "web-ui-phone.png", PHONE, max_height=1500))
        finally:
            browser.close()


if __name__ == "__main__":
    main()
