"""Real-browser fixtures: Debian's Chromium driven by Playwright, and a stand-in Shoptet admin page.

Playwright drives the system Chromium (`/usr/bin/chromium`, Debian package `chromium`); it never
downloads a browser of its own (`playwright install` is not used). Without that executable the browser
tests are skipped, unless `REQUIRE_BROWSER=1` is set (CI sets it), where they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Generator, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, ViewportSize

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# As root, in a sandbox with no network beyond loopback: no sandbox, no GPU, no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT: ViewportSize = {"width": 1280, "height": 1000}
TIMEOUT_MS = 10_000


def _browser_required() -> bool:
    return os.environ.get("REQUIRE_BROWSER", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _browser_required():
        pytest.fail(
            f"{reason} (REQUIRE_BROWSER is set, so this is an error, not a skip)",
            pytrace=False,
        )
    pytest.skip(reason)


def artifact_path(name: str) -> Path:
    """`test-artifacts/<name>` at the repository root (git-ignored; CI keeps it)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, so a fixture can tell that its test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.fixture
def browser_context(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    live_server: Any,
) -> Iterator[BrowserContext]:
    """A fresh headless Chromium (own temporary profile) with one empty browser context.

    Depends on `live_server`, so the browser is gone before the transactional database is flushed.
    """
    if not CHROMIUM.is_file():
        _unavailable(
            f"{CHROMIUM} not found: install Debian's Chromium (`apt-get install chromium`) "
            "to run the browser tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable(
            "the playwright package is missing: `pip install -r requirements-dev.txt`"
        )
    # Playwright's sync API keeps an asyncio loop running on this thread, which Django takes for an
    # async context: the ORM would refuse to run (hence the flag; the test code is synchronous), and
    # `connections` hands out other database connections than pytest-django's own, which nobody
    # closes (PostgreSQL then cannot drop the test database). So close whatever opens meanwhile.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with _closing_connections_opened_on_this_thread(), sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(TIMEOUT_MS)
            yield context
            reports = request.node.stash.get(_REPORTS, {})
            if "call" in reports and reports["call"].failed:
                for number, page in enumerate(context.pages):
                    page.screenshot(
                        path=artifact_path(f"{request.node.name}-failure-{number}.png"),
                        full_page=True,
                    )
        finally:
            browser.close()


@contextlib.contextmanager
def _closing_connections_opened_on_this_thread() -> Iterator[None]:
    """Close every database connection this thread opens inside the block (not other threads':
    the live server's request threads close their own)."""
    owner = threading.get_ident()
    opened: list[BaseDatabaseWrapper] = []

    def remember(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
        if threading.get_ident() == owner:
            opened.append(connection)

    connection_created.connect(remember, weak=False)
    try:
        yield
    finally:
        connection_created.disconnect(remember)
        for wrapper in opened:
            wrapper.close()


@pytest.fixture
def page(browser_context: BrowserContext) -> Page:
    return browser_context.new_page()


class AdminSite:
    """A stand-in for the Shoptet administration: one HTML page on its own origin (127.0.0.1)."""

    def __init__(self) -> None:
        self.html = "<!doctype html><title>empty</title>"
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/":
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                body = site.html.encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.url = f"{self.origin}/"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="admin-site", daemon=True
        )
        self._thread.start()

    def embed(self, src: str) -> None:
        """Serve an admin page that shows the addon at `src` in an iframe, as Shoptet does."""
        self.html = ADMIN_PAGE.replace("{src}", _attribute(src))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _attribute(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


ADMIN_PAGE = """<!doctype html>
<html lang="cs">
<head>
  <meta charset="utf-8">
  <title>Shoptet administrace (test)</title>
  <style>
    body { margin: 0; font-family: system-ui, sans-serif; background: #eef1f5; }
    header { background: #14213d; color: #fff; padding: .8rem 1.5rem; font-weight: 600; }
    main { padding: 1rem 1.5rem; }
    iframe { width: 100%; height: 760px; border: 1px solid #c8ced8; background: #fff; }
  </style>
</head>
<body>
  <header>Shoptet administrace — Doplňky (stránka jiného původu)</header>
  <main>
    <h2 id="admin-heading">Doplňky / Můj doplněk</h2>
    <iframe id="addon" title="addon" src="{src}"></iframe>
  </main>
</body>
</html>
"""


@pytest.fixture
def admin_site() -> Iterator[AdminSite]:
    site = AdminSite()
    yield site
    site.close()


@pytest.fixture
def screenshot() -> Callable[[Page, str], Path]:
    """Save a full-page screenshot of `page` as `test-artifacts/<name>`; returns its path."""

    def take(page: Page, name: str) -> Path:
        path = artifact_path(name)
        page.screenshot(path=path, full_page=True)
        return path

    return take
