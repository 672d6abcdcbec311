"""The admin in a real browser: Debian's chromium (never a downloaded one), headless, driven by
Playwright against the live server. A missing chromium fails the test, as a missing service does.
Screenshots, 1,280 px wide, go to test-artefacts/screenshots/ (kept out of git) for a reviewer."""

import shutil
from pathlib import Path

import pytest
from django.db import connections

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "screenshots"
WIDTH = 1280
PASSWORD = "x"  # the personas' password (tests/conftest.py)


def pytest_collection_modifyitems(items):
    # They start a browser and a live server: slow, and run by `make test` like every slow test.
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def browser(monkeypatch):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(
            f"Debian's chromium is not installed ({CHROMIUM}): apt-get install chromium, as .ci/run does"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls a test makes between
    # browser steps are ordinary synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
            ],
        )
        yield chromium
        chromium.close()
        # ORM calls made while Playwright's loop ran opened their own connections: close them, or
        # PostgreSQL refuses to drop the test database at the end of the suite.
        connections.close_all()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    yield page
    page.close()


class Screens:
    """Saves full-page screenshots under one prefix: 01-ops-dashboard.png, 02-…"""

    def __init__(self, page, prefix: str):
        self.page, self.prefix, self.count = page, prefix, 0

    def __call__(self, name: str) -> Path:
        self.count += 1
        path = SCREENSHOTS / f"{self.prefix}-{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def log_out(page) -> None:
    page.click("#logout-form button")
    page.wait_for_selector("#id_username, .logged-out, h1")
