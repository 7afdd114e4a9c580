"""A real browser for the page tests: Debian's ``chromium`` driven by Playwright's Python package
(never ``playwright install``: its browser download cannot work here, and is not needed).

    with browser() as b:                      # sync API (a plain test, or a thread)
        page = b.new_page(); page.goto(url)
    async with async_browser() as b:          # async API (an asyncio test)
        page = await b.new_page()

What this Chromium can decode (H.264 in MP4 and through MSE, and the rest) is measured by
tests/services/test_services.py and written down in README.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from ._proc import unavailable

__all__ = [
    "CHROMIUM_ARGS",
    "artifacts_dir",
    "async_browser",
    "browser",
    "chromium_executable",
]

# Known to work on this machine; no network beyond the page's own (loopback) requests.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
]

_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_executable() -> str | None:
    """``$CHROMIUM`` when set, else Debian's ``/usr/bin/chromium`` (Ubuntu's is a snap
    wrapper at ``chromium-browser``; it may work), else ``chromium`` on ``PATH``."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for path in _CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def artifacts_dir(*parts: str) -> Path:
    """``test-artifacts/`` at the repository root (gitignored; ``$TEST_ARTIFACTS`` overrides),
    or a subdirectory of it, created. Screenshots and logs worth keeping after a run."""
    root = Path(
        os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")
    )
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"  # the directory ignores itself: nothing in it is committed
    if not ignore.exists():
        ignore.write_text("*\n")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _launch_options(headless: bool, extra_args: list[str] | None) -> dict[str, Any]:
    exe = chromium_executable()
    if exe is None:
        unavailable(
            "chromium not found (Debian package `chromium`; `make system-deps` installs it)"
        )
    # Playwright gives each launch a fresh temporary profile (user-data-dir) and removes it.
    return {
        "executable_path": exe,
        "headless": headless,
        "args": [*CHROMIUM_ARGS, *(extra_args or [])],
        "timeout": 30_000,
        # The Debian wrapper script exports its own variables; keep ours.
        "env": {**os.environ},
    }


def _playwright_missing() -> None:
    unavailable("the `playwright` package is not installed (the `test` extra; `make install`)")


@contextmanager
def browser(*, headless: bool = True, extra_args: list[str] | None = None) -> Iterator[Any]:
    """A Playwright sync ``Browser`` on Debian's Chromium; closed at the end. Not usable from
    a running asyncio loop (Playwright refuses): use ``async_browser`` there, or a thread."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _playwright_missing()
        raise
    options = _launch_options(headless, extra_args)
    with sync_playwright() as pw:
        b = pw.chromium.launch(**options)
        try:
            yield b
        finally:
            b.close()


@asynccontextmanager
async def async_browser(
    *, headless: bool = True, extra_args: list[str] | None = None
) -> AsyncIterator[Any]:
    """The same with Playwright's async API, for asyncio tests."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _playwright_missing()
        raise
    options = _launch_options(headless, extra_args)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(**options)
        try:
            yield b
        finally:
            await b.close()
