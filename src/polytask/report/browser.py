"""Opening a report in a real headless Chromium (driven by Playwright): to take its screenshot,
and in the tests to check that it renders without console errors or network requests.

Playwright's own browser download is not needed: any Chromium works, found from
``$POLYTASK_CHROMIUM``, the Debian / Ubuntu packages, or a Playwright install."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.errors import PolytaskError
from polytask.optional import require

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
READY_TIMEOUT_MS = 120_000


def find_chromium() -> str | None:
    """A Chromium executable: $POLYTASK_CHROMIUM, then the usual names on PATH."""
    configured = os.environ.get("POLYTASK_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLog:
    """What the page said: console errors and warnings, uncaught errors, network requests."""

    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        logged = [f"console {kind}: {text}" for kind, text in self.console if kind == "error"]
        return logged + [f"page error: {e}" for e in self.errors]


@contextlib.contextmanager
def open_report(
    html: Path, *, javascript: bool = True, width: int = 1400, height: int = 1000
) -> Iterator[tuple[Any, PageLog]]:
    """The report loaded in a fresh headless Chromium page (requests to anything but the file
    itself are refused and logged), after its charts are drawn."""
    playwright = require(
        "playwright.sync_api",
        "opening a report in a browser",
        "dev",
        "pip install playwright (it drives the system's Chromium)",
    )
    executable = find_chromium()
    if executable is None:
        raise PolytaskError(
            "no Chromium found: install one (apt-get install chromium) or set POLYTASK_CHROMIUM"
        )
    log = PageLog()
    target = Path(html).resolve().as_uri()
    with playwright.sync_playwright() as driver:
        arguments = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        browser = driver.chromium.launch(executable_path=executable, args=arguments)
        try:
            context = browser.new_context(
                java_script_enabled=javascript, viewport={"width": width, "height": height}
            )
            page = context.new_page()
            page.on("console", lambda message: log.console.append((message.type, message.text)))
            page.on("pageerror", lambda error: log.errors.append(str(error)))

            def refuse(route: Any) -> None:
                if route.request.url != target:
                    log.requests.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            page.route("**/*", refuse)
            page.goto(target, wait_until="load")
            if javascript:
                page.wait_for_function("window.polytaskReady === true", timeout=READY_TIMEOUT_MS)
            yield page, log
        finally:
            browser.close()


def screenshot(html: Path, png: Path, *, width: int = 1400, height: int | None = None) -> PageLog:
    """A screenshot of the rendered report, the whole page or its top ``height`` pixels;
    returns what the page logged."""
    with open_report(html, width=width) as (page, log):
        png.parent.mkdir(parents=True, exist_ok=True)
        if height is None:
            page.screenshot(path=str(png), full_page=True)
        else:
            clip = {"x": 0, "y": 0, "width": width, "height": height}
            page.screenshot(path=str(png), full_page=True, clip=clip)
    return log
